package dev.rgmobile.engine

/**
 * The generation loop (runtime_py/generate.py is the reference): prefill by full chunks, then the
 * remainder one token at a time, then decode; stops on EOS (not emitted) or after maxNewTokens.
 * Each step's state replaces the previous one, which is closed right away.
 */
fun runTokens(backend: Backend, ids: IntArray, state: State, start: Int): Pair<FloatArray, State> {
    val chunks = planChunks(ids.size, backend.seqLens)
    if (chunks.isEmpty()) fail("nothing to run: the prompt is empty")
    var cur = state
    var pos = start
    var last: FloatArray? = null
    var i = 0
    for (n in chunks) {
        val tok = LongArray(n) { ids[i + it].toLong() }
        val positions = LongArray(n) { (pos + it).toLong() }
        val out = backend.step(tok, positions, cur)
        if (cur !== state) cur.close() // the caller owns the state it passed in
        cur = out.state
        last = out.lastRow()
        pos += n; i += n
    }
    return last!! to cur
}

fun checkFinite(logits: FloatArray, position: Int) {
    for (v in logits) {
        if (!v.isFinite()) {
            fail("the model produced ${if (v.isNaN()) "NaN" else "Inf"} logits at position $position; the bundle is broken (run its self-test)")
        }
    }
}

/** Incremental detokenizer with the same boundaries as runtime_py.generate.TextStream. */
class TextStream(private val tok: SentencePieceTokenizer, context: IntArray = IntArray(0), private val maxHold: Int = 64) {
    private val ids = ArrayList<Int>(context.toList())
    private var prefix = 0
    private var read = ids.size
    private var prefixText = if (ids.isEmpty()) "" else tok.decode(ids.toIntArray())

    private fun dec(from: Int, to: Int = ids.size) = tok.decode(ids.subList(from, to).toIntArray())

    fun push(token: Int): String {
        ids.add(token)
        val text = dec(prefix)
        if (text.endsWith("\uFFFD") && ids.size - read < maxHold) return ""
        val new = text.substring(minOf(prefixText.length, text.length))
        prefix = read; read = ids.size
        prefixText = dec(prefix, read)
        return new
    }

    fun flush(): String {
        if (read == ids.size) return ""
        val text = dec(prefix)
        prefix = read; read = ids.size
        return text.substring(minOf(prefixText.length, text.length))
    }
}

class GenerationResult(
    val promptIds: IntArray,
    val newIds: IntArray,
    val text: String,
    val stoppedOnEos: Boolean,
    val prefillSeconds: Double,
    val decodeSeconds: Double,
    val resumedTokens: Int,
    val stateBytes: Long,
) {
    /** Decode steps per second (the first new token comes from the prefill). */
    val decodeTokensPerSecond: Double get() = if (decodeSeconds > 0) maxOf(newIds.size - 1, 0) / decodeSeconds else 0.0
}

/** Runs generations on one backend + tokenizer; [identity] is what saved states must match. */
class Generator(val backend: Backend, val tokenizer: SentencePieceTokenizer, val io: IOSpec, val identity: Identity?, val eosId: Int) {
    constructor(bundle: Bundle, backend: Backend) :
        this(backend, bundle.tokenizer, bundle.manifest.io, bundle.manifest.identity, bundle.manifest.eosId)

    @Volatile var cancelled = false

    /**
     * Generate up to [maxNewTokens] after [prompt]. With [resume], continue a saved state (its last
     * token runs first, then [prompt] encoded without BOS); with [saveState], write the state after
     * the run (tokens: prompt + generated + the EOS that stopped it, if any; state: all but the last).
     */
    fun generate(
        prompt: String,
        maxNewTokens: Int,
        sampling: SamplingConfig = SamplingConfig(),
        onText: ((String) -> Unit)? = null,
        resume: SavedState? = null,
        saveState: java.io.File? = null,
    ): GenerationResult {
        if (maxNewTokens < 0) fail("max-new-tokens must be >= 0, got $maxNewTokens")
        cancelled = false
        var t0 = System.nanoTime()
        val history: IntArray
        val pending: IntArray
        val start: Int
        var state: State
        if (resume != null) {
            val added = if (prompt.isEmpty()) IntArray(0) else tokenizer.encode(prompt, addBos = false)
            history = resume.tokenIds + added
            pending = intArrayOf(resume.tokenIds.last()) + added
            start = resume.position
            state = backend.stateFromArrays(resume.arrays)
        } else {
            history = tokenizer.encode(prompt, addBos = true)
            if (history.isEmpty()) fail("nothing to run: the prompt is empty and the tokenizer has no BOS")
            pending = history; start = 0
            state = backend.initState()
        }
        val sampler = Sampler(sampling)
        val stream = TextStream(tokenizer, history.takeLast(1).toIntArray())
        val text = StringBuilder()
        val newIds = ArrayList<Int>()
        val tail = ArrayList<Int>()
        var stoppedOnEos = false
        var prefillSeconds: Double
        var decodeSeconds = 0.0
        try {
            if (maxNewTokens == 0) {
                if (pending.size > 1) {
                    val (_, s) = runTokens(backend, pending.copyOfRange(0, pending.size - 1), state, start)
                    if (s !== state) { state.close(); state = s }
                }
                prefillSeconds = (System.nanoTime() - t0) / 1e9
            } else {
                val (first, s) = runTokens(backend, pending, state, start)
                if (s !== state) { state.close(); state = s }
                prefillSeconds = (System.nanoTime() - t0) / 1e9
                var last = first
                var pos = start + pending.size
                t0 = System.nanoTime()
                while (!cancelled) {
                    checkFinite(last, pos - 1)
                    val token = sampler.sample(last)
                    if (token == eosId) { stoppedOnEos = true; tail.add(token); break }
                    newIds.add(token)
                    val piece = stream.push(token)
                    if (piece.isNotEmpty()) { text.append(piece); onText?.invoke(piece) }
                    if (newIds.size == maxNewTokens) break // the last token stays unrun (a saved state keeps it so)
                    val out = backend.step(longArrayOf(token.toLong()), longArrayOf(pos.toLong()), state)
                    state.close()
                    state = out.state
                    last = out.lastRow()
                    pos += 1
                }
                decodeSeconds = (System.nanoTime() - t0) / 1e9
            }
            val rest = stream.flush()
            if (rest.isNotEmpty()) { text.append(rest); onText?.invoke(rest) }
            var bytes = 0L
            if (saveState != null) {
                val id = identity ?: fail("the bundle's manifest has no identity (made by an older rgmobile); re-package it to save states")
                val tokens = history + newIds.toIntArray() + tail.toIntArray()
                bytes = StateFile.save(saveState, SavedState(tokens, state.arrays(), id), io)
            }
            return GenerationResult(
                history, newIds.toIntArray(), text.toString(), stoppedOnEos, prefillSeconds, decodeSeconds,
                resume?.tokenIds?.size ?: 0, bytes,
            )
        } finally {
            state.close()
        }
    }
}
