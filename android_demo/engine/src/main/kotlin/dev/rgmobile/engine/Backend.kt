package dev.rgmobile.engine

import java.nio.ByteBuffer
import java.nio.ByteOrder

/** A tensor's raw little-endian bytes with its IOSpec dtype and shape (what a state file stores). */
class HostTensor(val dtype: String, val shape: LongArray, val data: ByteBuffer) {
    init { data.order(ByteOrder.LITTLE_ENDIAN) }
    val byteSize: Int get() = data.remaining()

    companion object {
        fun itemSize(dtype: String): Int = when (dtype) {
            "float32" -> 4; "float16" -> 2; "int64" -> 8
            else -> fail("unsupported dtype $dtype")
        }
    }
}

/**
 * The recurrent + KV state of one sequence, owned by the backend that made it. Values, not
 * buffers: a step returns a new state and leaves the old one valid until it is closed.
 */
interface State : AutoCloseable {
    /** Copies of every state tensor keyed by IOSpec input name (for state files and checks). */
    fun arrays(): Map<String, HostTensor>
}

/**
 * The logits of a step of [tokens] tokens and the state after them. [logits] is row-major [r, v]:
 * r = t when the programs return every position's logits (io spec logits ["batch", "seq", v]),
 * r = 1 when they return only the last position's (["batch", 1, v]). Any other size is refused.
 */
class StepOutput(val logits: FloatArray, val tokens: Int, val vocab: Int, val state: State) {
    val rows: Int = logitsRows(logits.size, tokens, vocab)

    fun lastOffset(): Int = (rows - 1) * vocab

    /** The last position's logits [v] (a copy). */
    fun lastRow(): FloatArray = logits.copyOfRange(lastOffset(), lastOffset() + vocab)
}

/** Rows in [count] logits of a step of [tokens] tokens: [tokens] (every position's) or 1 (the last one's). */
fun logitsRows(count: Int, tokens: Int, vocab: Int): Int {
    val rows = count / vocab
    if (count % vocab != 0 || (rows != tokens && rows != 1)) {
        fail("a step of $tokens tokens returned $count logits, not [$tokens, $vocab] (every position's) or " +
            "[1, $vocab] (the last one's); the program does not match the manifest's io spec, re-export the artifact")
    }
    return rows
}

/** One runtime that runs the step (docs/bundle.md "The step and the loop"). */
interface Backend : AutoCloseable {
    val name: String
    /** Step lengths this backend runs, largest first; always contains 1. */
    val seqLens: List<Int>

    fun initState(): State

    /** Run [inputIds] at absolute [positionIds] (same length, a supported seq len) after [state]. */
    fun step(inputIds: LongArray, positionIds: LongArray, state: State): StepOutput

    /** Inverse of [State.arrays]: a state from host tensors in the IOSpec's dtypes and shapes. */
    fun stateFromArrays(arrays: Map<String, HostTensor>): State
}

/** Split [length] tokens into supported step lengths, largest first; never pads (runtime_py/backend.py). */
fun planChunks(length: Int, seqLens: List<Int>): List<Int> {
    val sizes = (seqLens.filter { it >= 1 } + 1).distinct().sortedDescending()
    val out = ArrayList<Int>()
    var left = length
    for (s in sizes) while (left >= s) { out.add(s); left -= s }
    return out
}
