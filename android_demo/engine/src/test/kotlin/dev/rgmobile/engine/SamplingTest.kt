package dev.rgmobile.engine

import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertNotEquals
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.Test
import org.junit.jupiter.api.assertThrows
import kotlin.random.Random

class SamplingTest {
    private val logits = FloatArray(4096) { Random(7).nextFloat() }.also { l -> val r = Random(11); for (i in l.indices) l[i] = (r.nextFloat() * 8 - 4) }

    private fun draw(cfg: SamplingConfig, n: Int = 300): List<Int> { val s = Sampler(cfg); return List(n) { s.sample(logits) } }

    @Test
    fun `greedy is argmax and takes the lowest id on ties`() {
        val l = floatArrayOf(0f, 3f, 1f, 3f, -2f)
        assertEquals(1, Sampler(SamplingConfig()).sample(l))
        val top = logits.indices.maxByOrNull { logits[it] }!!
        assertEquals(top, Sampler(SamplingConfig()).sample(logits))
    }

    @Test
    fun `a seed reproduces the same tokens and another seed does not`() {
        val cfg = SamplingConfig(temperature = 1.0, seed = 1234)
        val a = draw(cfg); val b = draw(cfg)
        assertEquals(a, b)
        assertNotEquals(a, draw(cfg.copy(seed = 1235)))
        assertTrue(a.toSet().size > 50, "temperature 1 over 4096 near-flat logits should spread (got ${a.toSet().size} distinct)")
    }

    @Test
    fun `top-k keeps only the k largest logits`() {
        val topK = logits.indices.sortedByDescending { logits[it] }.take(5).toSet()
        val got = draw(SamplingConfig(temperature = 1.0, topK = 5, seed = 3)).toSet()
        assertTrue(topK.containsAll(got), "drew $got outside the top 5 $topK")
        assertEquals(topK, got) // 300 draws from 5 comparable candidates hit all of them
    }

    @Test
    fun `top-p keeps the smallest prefix whose mass reaches p`() {
        val l = floatArrayOf(Math.log(0.5).toFloat(), Math.log(0.3).toFloat(), Math.log(0.15).toFloat(), Math.log(0.05).toFloat())
        val s = Sampler(SamplingConfig(temperature = 1.0, topP = 0.7, seed = 9))
        val got = List(500) { s.sample(l) }.toSet()
        assertEquals(setOf(0, 1), got)
        val s2 = Sampler(SamplingConfig(temperature = 1.0, topP = 0.81, seed = 9))
        assertEquals(setOf(0, 1, 2), List(500) { s2.sample(l) }.toSet())
    }

    @Test
    fun `bad options are typed errors`() {
        assertThrows<RgMobileException> { SamplingConfig(temperature = -1.0) }
        assertThrows<RgMobileException> { SamplingConfig(topK = -1) }
        assertThrows<RgMobileException> { SamplingConfig(topP = 0.0) }
    }

    @Test
    fun `chunk plan never pads`() {
        assertEquals(listOf(32, 32, 1, 1, 1), planChunks(67, listOf(32, 1)))
        assertEquals(listOf(1, 1), planChunks(2, listOf(1)))
        assertEquals(emptyList<Int>(), planChunks(0, listOf(32, 1)))
    }
}
