package dev.rgmobile.engine

import ai.onnxruntime.OnnxJavaType
import ai.onnxruntime.OnnxTensor
import ai.onnxruntime.OrtEnvironment
import ai.onnxruntime.OrtException
import ai.onnxruntime.OrtSession
import ai.onnxruntime.TensorInfo
import java.io.File
import java.nio.ByteBuffer
import java.nio.ByteOrder
import java.nio.LongBuffer

/** onnxruntime's session option for its intra-op pool: "1" (its default) spin-waits between pieces of work. */
const val SPIN_CONFIG_KEY = "session.intra_op.allow_spinning"

/** The manifest's dtypes as onnxruntime's Java API names them. */
private val ONNX_TYPES = mapOf("float32" to OnnxJavaType.FLOAT, "float16" to OnnxJavaType.FLOAT16, "int64" to OnnxJavaType.INT64)

/**
 * onnxruntime backend (`ai.onnxruntime`, the same Java API on the desktop and in onnxruntime-android).
 * One session per program file (decode t = 1, prefill t = chunk): programs naming the same file
 * (the default ONNX export: `step.onnx`, its token dim symbolic) share one session, because
 * onnxruntime packs the weights once per session. A step's `present.*` outputs stay
 * native OnnxTensors and are passed as the next step's `past_key_values.*` inputs: the state never
 * goes through the JVM heap between steps (only the logits are copied out). Each run allocates
 * fresh outputs, so the old state stays valid until the caller closes it.
 * `spin = false` sets onnxruntime's [SPIN_CONFIG_KEY] to "0" (decode measured faster with a busy core).
 */
class OnnxBackend(bundle: Bundle, threads: Int? = null, spin: Boolean = true) : Backend {
    override val name = "onnxruntime"
    private val manifest = bundle.manifest
    private val io = manifest.io
    private val env: OrtEnvironment = OrtEnvironment.getEnvironment()
    private val byFile = LinkedHashMap<String, OrtSession>() // program file -> its one session (close() closes these)
    private val sessions = HashMap<Int, OrtSession>() // t -> the session of the program file that runs it
    private val outputToInput = io.stateInputs.associate { it.pair!! to it.name }
    private val vocab = manifest.vocabSize

    init {
        if (manifest.format != "onnx") fail("${bundle.dir}: bundle format is '${manifest.format}', the ONNX backend runs 'onnx'")
        val opts = OrtSession.SessionOptions()
        if (threads != null && threads > 0) {
            opts.setIntraOpNumThreads(threads)
            opts.setInterOpNumThreads(1)
        }
        // spin = false: idle pool threads block at once; with another app on a core, spinning steals its time
        if (!spin) opts.addConfigEntry(SPIN_CONFIG_KEY, "0")
        try {
            for ((programName, prog) in manifest.programs) {
                val sess = byFile.getOrPut(prog.file) { openSession(bundle.file(prog.file), programName, opts) }
                checkGraph(sess, programName, prog.seqLen)
                for (t in prog.lengths) sessions[t] = sess // one t, or every t from the program's min_seq_len
            }
        } catch (e: RgMobileException) { // the sessions opened before the failing one
            close()
            throw e
        } finally {
            opts.close()
        }
    }

    override val seqLens: List<Int> = sessions.keys.sortedDescending()

    /** onnxruntime sessions held: one per distinct program file (1 for the default export's `step.onnx`). */
    val sessionCount: Int get() = byFile.size

    /** A session for [path]; only its I/O names are checked: its token dim may be symbolic ("seq"). */
    private fun openSession(path: File, programName: String, opts: OrtSession.SessionOptions): OrtSession {
        val sess = try {
            env.createSession(path.path, opts)
        } catch (e: OrtException) {
            fail("$path: onnxruntime cannot load program '$programName': ${e.message?.lineSequence()?.first()}")
        }
        val ins = sess.inputNames.toList()
        val outs = sess.outputNames.toList()
        if (ins.toSet() != io.inputs.map { it.name }.toSet() || outs.toSet() != io.outputs.map { it.name }.toSet()) {
            sess.close()
            fail("program '$programName': graph I/O names differ from the manifest's io spec; re-export the artifact")
        }
        return sess
    }

    /**
     * The graph's tensors must be the manifest's io spec: dtypes and every static dim (a symbolic graph
     * dim accepts anything; the manifest's "seq" is [seqLen], this program's t), as the Python backend checks.
     */
    private fun checkGraph(sess: OrtSession, programName: String, seqLen: Int) {
        val graph = sess.inputInfo + sess.outputInfo
        for (spec in io.inputs + io.outputs) {
            val info = graph[spec.name]?.info as? TensorInfo
                ?: fail("program '$programName': graph tensor ${spec.name} is not a tensor; re-export the artifact")
            val dims = info.shape.toList() // -1: symbolic
            val bound = spec.shape.map { if (it == "seq") seqLen.toLong() else (it as? Number)?.toLong() }
            val clash = dims.size != bound.size || dims.zip(bound).any { (g, m) -> g >= 0 && m != null && g != m }
            if (ONNX_TYPES[spec.dtype] != info.type || clash) {
                val shown = spec.shape.map { if (it == "seq") seqLen else it }
                fail("program '$programName': graph tensor ${spec.name} is ${info.type} $dims, the manifest's io spec " +
                    "says ${spec.dtype} $shown; re-export the artifact")
            }
        }
    }

    /** A state: the tensors by IOSpec input name and what frees them (an OrtSession.Result or the tensors). */
    private class OnnxState(val tensors: Map<String, OnnxTensor>, val owner: AutoCloseable?) : State {
        private var closed = false
        override fun arrays(): Map<String, HostTensor> {
            check(!closed) { "state used after close" }
            return tensors.mapValues { (_, t) ->
                val info = t.info
                val dtype = ONNX_TYPES.entries.firstOrNull { it.value == info.type }?.key
                    ?: fail("state tensor of unsupported type ${info.type}")
                val bytes = t.byteBuffer.order(ByteOrder.nativeOrder()) // a copy
                HostTensor(dtype, info.shape, toLittleEndian(bytes, dtype))
            }
        }

        override fun close() {
            if (closed) return
            closed = true
            if (owner != null) owner.close() else tensors.values.forEach { it.close() }
        }
    }

    override fun initState(): State {
        val tensors = LinkedHashMap<String, OnnxTensor>()
        for (s in io.stateInputs) {
            if (s.init != "zeros") fail("io spec: unsupported init '${s.init}' for ${s.name}")
            val shape = s.concreteShape()
            val bytes = s.elementCount().toInt() * HostTensor.itemSize(s.dtype)
            val buf = ByteBuffer.allocateDirect(bytes).order(ByteOrder.nativeOrder()) // zero-filled
            tensors[s.name] = createTensor(s.dtype, buf, shape)
        }
        return OnnxState(tensors, null)
    }

    override fun stateFromArrays(arrays: Map<String, HostTensor>): State {
        val tensors = LinkedHashMap<String, OnnxTensor>()
        for (s in io.stateInputs) {
            val h = arrays[s.name] ?: fail("state tensor ${s.name} is missing")
            val want = s.concreteShape()
            if (!h.shape.contentEquals(want)) fail("state tensor ${s.name} is ${h.shape.toList()}, this model needs ${want.toList()}")
            if (h.dtype != s.dtype) fail("state tensor ${s.name} is ${h.dtype}, this model needs ${s.dtype}")
            val src = h.data.duplicate().order(ByteOrder.LITTLE_ENDIAN)
            val buf = ByteBuffer.allocateDirect(src.remaining()).order(ByteOrder.nativeOrder())
            fromLittleEndian(src, buf, s.dtype)
            buf.flip()
            tensors[s.name] = createTensor(s.dtype, buf, want)
        }
        return OnnxState(tensors, null)
    }

    private fun createTensor(dtype: String, buf: ByteBuffer, shape: LongArray): OnnxTensor = when (dtype) {
        "float32" -> OnnxTensor.createTensor(env, buf.asFloatBuffer(), shape)
        "int64" -> OnnxTensor.createTensor(env, buf.asLongBuffer(), shape)
        "float16" -> OnnxTensor.createTensor(env, buf, shape, OnnxJavaType.FLOAT16)
        else -> fail("unsupported state dtype $dtype")
    }

    override fun step(inputIds: LongArray, positionIds: LongArray, state: State): StepOutput {
        val t = inputIds.size
        val sess = sessions[t] ?: fail("onnx bundle runs ${describeLengths(seqLens)} tokens per step, not $t")
        require(positionIds.size == t) { "position_ids length ${positionIds.size} != $t" }
        val st = state as? OnnxState ?: fail("state from another backend")
        val shape = longArrayOf(1, t.toLong())
        OnnxTensor.createTensor(env, LongBuffer.wrap(inputIds), shape).use { ids ->
            OnnxTensor.createTensor(env, LongBuffer.wrap(positionIds), shape).use { pos ->
                val inputs = HashMap<String, OnnxTensor>(st.tensors)
                inputs["input_ids"] = ids
                inputs["position_ids"] = pos
                val result = try {
                    sess.run(inputs)
                } catch (e: OrtException) {
                    fail("onnxruntime failed running the t=$t program: ${e.message?.lineSequence()?.first()}")
                }
                try {
                    val logitsT = result.get(io.outputs[0].name).get() as OnnxTensor
                    val buffer = logitsT.floatBuffer // [1, t, v], or [1, 1, v]: the last position's only
                    val logits = FloatArray(buffer.remaining())
                    buffer.get(logits)
                    val next = LinkedHashMap<String, OnnxTensor>()
                    for (o in io.stateOutputs) next[outputToInput.getValue(o.name)] = result.get(o.name).get() as OnnxTensor
                    return StepOutput(logits, t, vocab, OnnxState(next, result))
                } catch (e: Exception) { // RgMobileException too (a logits size StepOutput refuses)
                    result.close()
                    throw e
                }
            }
        }
    }

    override fun close() {
        byFile.values.forEach { it.close() } // each session once, however many programs share it
        byFile.clear()
        sessions.clear()
    }

    companion object {
        /** Reorder [b] (native order) to little-endian bytes; a no-op on little-endian machines. */
        internal fun toLittleEndian(b: ByteBuffer, dtype: String): ByteBuffer {
            if (ByteOrder.nativeOrder() == ByteOrder.LITTLE_ENDIAN) return b.order(ByteOrder.LITTLE_ENDIAN)
            val out = ByteBuffer.allocate(b.remaining()).order(ByteOrder.LITTLE_ENDIAN)
            fromLittleEndian(b, out, dtype, swap = true)
            out.flip()
            return out
        }

        private fun fromLittleEndian(src: ByteBuffer, dst: ByteBuffer, dtype: String, swap: Boolean = false) {
            val s = src.duplicate().order(if (swap) ByteOrder.nativeOrder() else ByteOrder.LITTLE_ENDIAN)
            when (HostTensor.itemSize(dtype)) {
                8 -> while (s.hasRemaining()) dst.putLong(s.long)
                4 -> while (s.hasRemaining()) dst.putInt(s.int)
                2 -> while (s.hasRemaining()) dst.putShort(s.short)
            }
        }
    }
}
