package dev.rgmobile.demo

import dev.rgmobile.engine.Backend
import dev.rgmobile.engine.Bundle
import dev.rgmobile.engine.HostTensor
import dev.rgmobile.engine.RgMobileException
import dev.rgmobile.engine.State
import dev.rgmobile.engine.StepOutput
import org.pytorch.executorch.EValue
import org.pytorch.executorch.Module
import org.pytorch.executorch.Tensor
import java.nio.ByteBuffer
import java.nio.ByteOrder

/**
 * ExecuTorch backend for .pte bundles (methods `decode`, `prefill` and any `prefill_<t>`, named by
 * `programs[*].entry`; a step of t tokens runs the method whose program has that seq_len).
 * Inputs: input_ids, position_ids, then the state tensors in IOSpec order; outputs: logits, then the
 * state outputs in IOSpec order (docs/bundle.md). Runs on the device only (the AAR's JNI library).
 */
class ExecuTorchBackend(bundle: Bundle) : Backend {
    override val name = "executorch"
    private val manifest = bundle.manifest
    private val io = manifest.io
    private val methods: Map<Int, String>
    private val module: Module

    init {
        if (manifest.format != "executorch") throw RgMobileException("${bundle.dir}: bundle format is '${manifest.format}', not 'executorch'")
        val files = manifest.programs.values.map { it.file }.toSet()
        if (files.size != 1) throw RgMobileException("${bundle.dir}: an ExecuTorch bundle keeps every method in one .pte, found $files")
        val data = manifest.files.map { it.path }.filter { it.endsWith(".ptd") }
        if (data.isNotEmpty()) throw RgMobileException(
            "${bundle.dir}: the program keeps its weights in ${data.joinToString()}, which ExecuTorch's Android Module " +
                "does not load; package an int8 or int4 ExecuTorch export (weights inside the .pte)"
        )
        // mmap without mlock: the file's pages load as steps read them and the system may drop them
        // again (the default mode reads the whole .pte into memory, beside XNNPACK's packed weights)
        module = Module.load(bundle.file(files.single()).path, Module.LOAD_MODE_MMAP)
        methods = manifest.programs.map { (name, p) -> p.seqLen to (p.entry ?: name) }.toMap()
        for (s in io.stateInputs) {
            if (s.dtype != "float32") throw RgMobileException("state ${s.name} is ${s.dtype}; this app's ExecuTorch backend runs float32 states")
        }
    }

    override val seqLens: List<Int> = methods.keys.sortedDescending()

    /** Tensors returned by execute() hold their own copies: no native buffers to free. */
    private class EtState(val tensors: Map<String, Tensor>) : State {
        override fun arrays(): Map<String, HostTensor> = tensors.mapValues { (_, t) ->
            val data = t.dataAsFloatArray
            val buf = ByteBuffer.allocate(4 * data.size).order(ByteOrder.LITTLE_ENDIAN)
            data.forEach { buf.putFloat(it) }
            buf.flip()
            HostTensor("float32", t.shape(), buf)
        }

        override fun close() {}
    }

    override fun initState(): State =
        EtState(io.stateInputs.associate { s -> s.name to Tensor.fromBlob(FloatArray(s.elementCount().toInt()), s.concreteShape()) })

    override fun stateFromArrays(arrays: Map<String, HostTensor>): State = EtState(
        io.stateInputs.associate { s ->
            val h = arrays[s.name] ?: throw RgMobileException("state tensor ${s.name} is missing")
            val b = h.data.duplicate().order(ByteOrder.LITTLE_ENDIAN)
            s.name to Tensor.fromBlob(FloatArray(b.remaining() / 4) { b.float }, s.concreteShape())
        },
    )

    override fun step(inputIds: LongArray, positionIds: LongArray, state: State): StepOutput {
        val t = inputIds.size
        val method = methods[t] ?: throw RgMobileException("the .pte runs $seqLens tokens per step, not $t")
        val st = state as EtState
        val shape = longArrayOf(1, t.toLong())
        val inputs = ArrayList<EValue>()
        inputs.add(EValue.from(Tensor.fromBlob(inputIds, shape)))
        inputs.add(EValue.from(Tensor.fromBlob(positionIds, shape)))
        for (s in io.stateInputs) inputs.add(EValue.from(st.tensors.getValue(s.name)))
        val outs = try {
            module.execute(method, *inputs.toTypedArray())
        } catch (e: Exception) {
            throw RgMobileException("ExecuTorch failed running method '$method': ${e.message}")
        }
        val stateOuts = io.stateOutputs
        if (outs.size != 1 + stateOuts.size) throw RgMobileException("method '$method' returned ${outs.size} values, the io spec has ${1 + stateOuts.size}")
        val logits = outs[0].toTensor().dataAsFloatArray
        val byInput = io.stateInputs.associateBy { it.pair }
        val next = HashMap<String, Tensor>()
        stateOuts.forEachIndexed { i, o -> next[byInput.getValue(o.name).name] = outs[1 + i].toTensor() }
        return StepOutput(logits, t, manifest.vocabSize, EtState(next))
    }

    override fun close() = module.destroy()
}
