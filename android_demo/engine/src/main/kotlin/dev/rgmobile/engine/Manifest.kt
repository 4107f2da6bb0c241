package dev.rgmobile.engine

/** One graph input or output of the step (docs/bundle.md, "The step and the loop"). */
data class TensorSpec(
    val name: String,
    val dtype: String, // "int64" | "float32" | "float16"
    val shape: List<Any>, // Long (a JSON integer) or the symbolic "batch" / "seq"
    val role: String, // "tokens" | "positions" | "state" | "logits"
    val pair: String?,
    val init: String?,
) {
    /** The shape with batch and seq bound. */
    fun concreteShape(batch: Int = 1, seq: Int = 1): LongArray =
        shape.map {
            when (it) {
                "batch" -> batch.toLong()
                "seq" -> seq.toLong()
                is Long -> it
                is Int -> it.toLong()
                else -> fail("io spec: $name has unknown dim '$it'")
            }
        }.toLongArray()

    fun elementCount(batch: Int = 1, seq: Int = 1): Long = concreteShape(batch, seq).fold(1L) { a, b -> a * b }
}

data class IOSpec(val inputs: List<TensorSpec>, val outputs: List<TensorSpec>) {
    val stateInputs: List<TensorSpec> get() = inputs.filter { it.role == "state" }
    val stateOutputs: List<TensorSpec> get() = outputs.filter { it.role == "state" }
}

/** One program: [seqLen] tokens per call, or with [minSeqLen] any t from it to [seqLen] (a symbolic token dim). */
data class Program(val file: String, val seqLen: Int, val entry: String?, val minSeqLen: Int? = null) {
    /** Every t this program runs. */
    val lengths: IntRange get() = (minSeqLen ?: seqLen)..seqLen
}

/** Step lengths as runs, longest first: "128..2, 1" (exporter/artifact/manifest.py describe_lengths). */
fun describeLengths(lengths: Collection<Int>): String {
    val runs = ArrayList<IntArray>()
    for (t in lengths.distinct().sortedDescending()) {
        if (runs.isNotEmpty() && runs.last()[1] == t + 1) runs.last()[1] = t else runs.add(intArrayOf(t, t))
    }
    return runs.joinToString(", ") { (a, b) -> if (a == b) "$a" else "$a..$b" }
}

data class FileEntry(val path: String, val size: Long, val sha256: String)

/** What a saved state must match (manifest `identity`); apps compare the strings, never recompute them. */
data class Identity(val configSha256: String, val weightsSha256: String, val precision: String)

/** The parsed manifest.json (schema 1; the Python reader in exporter/artifact/manifest.py is the reference). */
data class Manifest(
    val schemaVersion: Int,
    val format: String,
    val precision: String,
    val vocabSize: Int,
    val window: Int,
    val numLayers: Int,
    val bosId: Int,
    val eosId: Int,
    val padId: Int,
    val tokenizerFile: String,
    val prefillChunk: Int,
    val io: IOSpec,
    val programs: Map<String, Program>,
    val files: List<FileEntry>,
    val identity: Identity?,
    val bundleName: String?,
    val selftestFile: String?,
    val validationStatus: String?,
) {
    /** Every step length some program runs, longest first. */
    val seqLens: List<Int> get() = programs.values.flatMap { it.lengths }.distinct().sortedDescending()

    companion object {
        const val SCHEMA_VERSION = 1
        const val NAME = "manifest.json"
        private val REQUIRED = listOf(
            "schema_version", "format", "rgmobile_version", "created", "source", "precision", "quantization",
            "config", "special_tokens", "tokenizer_file", "prefill_chunk", "io", "programs", "files", "format_details",
        )

        fun parse(text: String, where: String): Manifest {
            val root = JObj(JObj.asMap(Json.parse(text, where), "$where: expected a JSON object"), where)
            val version = root.map["schema_version"] as? Long ?: fail("$where: missing or non-integer schema_version")
            if (version > SCHEMA_VERSION) {
                fail("$where: schema_version $version is newer than this app reads ($SCHEMA_VERSION); upgrade the app")
            }
            if (version < 1) fail("$where: invalid schema_version $version")
            val missing = REQUIRED.filter { !root.map.containsKey(it) }
            if (missing.isNotEmpty()) fail("$where: missing required field(s) $missing")
            val config = root.obj("config")
            val tokens = root.obj("special_tokens")
            val io = parseIo(root.obj("io"), where)
            val programs = root.obj("programs").let { p ->
                p.map.keys.associateWith { name ->
                    val o = p.obj(name)
                    val seq = o.int("seq_len")
                    if (seq < 1) fail("$where: program '$name' needs a positive seq_len")
                    val low = o.map["min_seq_len"]?.let { v ->
                        (v as? Long)?.toInt()?.takeIf { it in 1..seq }
                            ?: fail("$where: program '$name' 'min_seq_len' must be an integer from 1 to its seq_len")
                    }
                    Program(safePath(o.str("file"), where), seq, o.strOrNull("entry"), low)
                }
            }
            val files = root.objs("files").map { f ->
                val sha = f.str("sha256")
                if (sha.length != 64) fail("$where: file '${f.str("path")}' needs a 64-hex-digit sha256")
                FileEntry(safePath(f.str("path"), where), f.long("size"), sha.lowercase())
            }
            val identity = root.objOrNull("identity")?.let {
                Identity(it.str("config_sha256"), it.str("weights_sha256"), it.str("precision"))
            }
            val bundle = root.objOrNull("bundle")
            val m = Manifest(
                schemaVersion = version.toInt(),
                format = root.str("format"),
                precision = root.str("precision"),
                vocabSize = config.int("vocab_size"),
                window = config.int("window"),
                numLayers = config.list("block_types").size,
                bosId = tokens.int("bos_id"),
                eosId = tokens.int("eos_id"),
                padId = tokens.int("pad_id"),
                tokenizerFile = safePath(root.str("tokenizer_file"), where),
                prefillChunk = root.int("prefill_chunk"),
                io = io,
                programs = programs,
                files = files,
                identity = identity,
                bundleName = bundle?.strOrNull("name"),
                selftestFile = bundle?.strOrNull("selftest_file"),
                validationStatus = bundle?.objOrNull("validation")?.strOrNull("status"),
            )
            m.checkConsistency(where)
            return m
        }

        private fun parseIo(o: JObj, where: String): IOSpec {
            fun spec(s: JObj) = TensorSpec(
                s.str("name"), s.str("dtype"), s.list("shape").map { it ?: fail("$where: null dim in ${s.str("name")}") },
                s.str("role"), s.strOrNull("pair"), s.strOrNull("init"),
            )
            val io = IOSpec(o.objs("inputs").map(::spec), o.objs("outputs").map(::spec))
            for (s in io.inputs + io.outputs) {
                if (s.dtype !in listOf("int64", "float32", "float16")) fail("$where: io ${s.name} has unsupported dtype ${s.dtype}")
            }
            if (io.inputs.size < 2 || io.inputs[0].role != "tokens" || io.inputs[1].role != "positions" ||
                io.outputs.isEmpty() || io.outputs[0].role != "logits"
            ) fail("$where: io spec must be (input_ids, position_ids, state...) -> (logits, state...)")
            // The middle dim: "seq" (every position's logits) or 1 (exported with last-position logits).
            // JSON integers parse as Long, hence 1L; the string "1" is refused.
            val logits = io.outputs[0].shape
            if (logits.size != 3 || logits[0] != "batch" || (logits[1] != "seq" && logits[1] != 1L)) {
                fail("$where: logits shape must be [batch, seq or 1, vocab], got $logits; re-export the artifact")
            }
            val outs = io.outputs.associateBy { it.name }
            for (s in io.stateInputs) {
                val o2 = outs[s.pair] ?: fail("$where: state input ${s.name} is not paired with a state output")
                if (o2.shape != s.shape || o2.dtype != s.dtype) fail("$where: ${s.name} and ${o2.name} differ in shape or dtype")
            }
            return io
        }

        private fun safePath(p: String, where: String): String {
            if (p.isEmpty() || p.startsWith("/") || p.contains('\\') || p.split('/').contains("..")) {
                fail("$where: path '$p' must be relative, inside the bundle, with '/'")
            }
            return p
        }
    }

    private fun checkConsistency(where: String) {
        val listed = files.map { it.path }.toSet()
        if (listed.size != files.size) fail("$where: a file is listed twice in 'files'")
        if (programs.values.none { it.seqLen == 1 }) fail("$where: no program with seq_len 1 (decode)")
        if (prefillChunk != programs.values.maxOf { it.seqLen }) fail("$where: prefill_chunk $prefillChunk is not the largest program seq_len")
        val owner = HashMap<Int, String>()
        for ((name, p) in programs) {
            for (t in p.lengths) {
                val other = owner.putIfAbsent(t, name)
                if (other != null) fail("$where: programs '$other' and '$name' both run $t tokens per step")
            }
        }
        for ((name, p) in programs) {
            if (p.file !in listed && listed.none { it.startsWith(p.file.trimEnd('/') + "/") }) {
                fail("$where: program '$name' file '${p.file}' is not listed in 'files'")
            }
        }
        if (tokenizerFile !in listed) fail("$where: tokenizer_file '$tokenizerFile' is not listed in 'files'")
        val logitsWidth = io.outputs[0].shape.last()
        if (logitsWidth != vocabSize.toLong()) fail("$where: logits width $logitsWidth != config vocab_size $vocabSize")
        if (io.stateInputs.size != 2 * numLayers) {
            fail("$where: io has ${io.stateInputs.size} state inputs; a $numLayers-layer model has ${2 * numLayers}")
        }
    }
}
