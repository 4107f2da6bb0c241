package dev.rgmobile.engine

import org.junit.jupiter.api.Assertions.assertArrayEquals
import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.Test
import org.junit.jupiter.api.assertThrows

/**
 * A step returns every position's logits [t, v] or, exported with last-position logits, the last
 * one's [1, v]; the engine reads the last row of either. Bundle-free: a fake backend.
 */
class StepOutputTest {
    private val vocab = 5

    private object NoState : State {
        override fun arrays(): Map<String, HostTensor> = emptyMap()
        override fun close() {}
    }

    /** Logits [r, v] of a step: position p's row is a function of (token, p); [rows] picks how many are returned. */
    private class FakeBackend(val vocab: Int, val rows: (Int) -> Int) : Backend {
        override val name = "fake"
        override val seqLens = listOf(4, 1)
        override fun initState(): State = NoState
        override fun stateFromArrays(arrays: Map<String, HostTensor>): State = NoState
        override fun close() {}

        override fun step(inputIds: LongArray, positionIds: LongArray, state: State): StepOutput {
            val t = inputIds.size
            val all = FloatArray(t * vocab) { i -> ((inputIds[i / vocab] * 7 + positionIds[i / vocab] * 3 + i % vocab) % 11).toFloat() }
            val r = rows(t)
            return StepOutput(all.copyOfRange((t - r) * vocab, t * vocab), t, vocab, NoState)
        }
    }

    @Test
    fun `the last row of a full step equals a last-position-only step`() {
        val full = FloatArray(3 * vocab) { it.toFloat() }
        val a = StepOutput(full, 3, vocab, NoState)
        val b = StepOutput(full.copyOfRange(2 * vocab, 3 * vocab), 3, vocab, NoState)
        assertEquals(3, a.rows); assertEquals(1, b.rows)
        assertEquals(2 * vocab, a.lastOffset()); assertEquals(0, b.lastOffset())
        assertArrayEquals(a.lastRow(), b.lastRow())
    }

    @Test
    fun `a prompt run gives the same last logits and greedy token in both forms`() {
        val ids = intArrayOf(2, 9, 4, 1, 7, 3) // chunks 4, 1, 1
        val (full, _) = runTokens(FakeBackend(vocab) { t -> t }, ids, NoState, 0)
        val (last, _) = runTokens(FakeBackend(vocab) { 1 }, ids, NoState, 0)
        assertArrayEquals(full, last)
        assertEquals(Sampler.argmax(full), Sampler.argmax(last))
        val cfg = SamplingConfig(temperature = 1.0, seed = 5)
        assertEquals(Sampler(cfg).sample(full), Sampler(cfg).sample(last))
    }

    @Test
    fun `a row count other than t or 1 is one clear error`() {
        val e = assertThrows<RgMobileException> { runTokens(FakeBackend(vocab) { t -> if (t > 1) 2 else 1 }, IntArray(4) { it }, NoState, 0) }
        assertTrue(e.message!!.contains("a step of 4 tokens returned 10 logits, not [4, 5] (every position's) or [1, 5]"), e.message)
        val e2 = assertThrows<RgMobileException> { StepOutput(FloatArray(7), 1, vocab, NoState) }
        assertTrue(e2.message!!.contains("returned 7 logits"), e2.message)
    }
}
