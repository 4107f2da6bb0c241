package dev.rgmobile.engine

import org.junit.jupiter.api.AfterAll
import org.junit.jupiter.api.Assertions.assertArrayEquals
import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertNotNull
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.Test
import org.junit.jupiter.api.TestInstance
import org.junit.jupiter.api.io.TempDir
import org.junit.jupiter.params.ParameterizedTest
import org.junit.jupiter.params.provider.ValueSource
import java.io.File

/** The engine on real bundles: greedy ids vs rgmobile's Python run (artifact_greedy_ids), self-test, resume. */
@TestInstance(TestInstance.Lifecycle.PER_CLASS)
class EngineBundleTest {
    private val backends = HashMap<String, OnnxBackend>()

    private fun backend(which: String): Pair<Bundle, OnnxBackend> {
        val b = TestBundles.bundle(which)
        return b to backends.getOrPut(which) { OnnxBackend(b, threads = 1) }
    }

    @AfterAll fun close() = backends.values.forEach { it.close() }

    @ParameterizedTest
    @ValueSource(strings = ["RGMOBILE_BUNDLE_FP32", "RGMOBILE_BUNDLE_INT4", "RGMOBILE_BUNDLE_PER_LENGTH"])
    fun `greedy ids equal the Python runtime's on every selftest case`(which: String) {
        val (b, be) = backend(which)
        val gen = Generator(b, be)
        for (c in b.selftest!!.cases) {
            val expected = assertNotNull(c.artifactGreedyIds, "case ${c.name}: selftest.json has no artifact_greedy_ids").let { c.artifactGreedyIds!! }
            assertTrue(c.maxNewTokens >= 2 * b.manifest.window, "case ${c.name} generates ${c.maxNewTokens} < 2 x window")
            val r = gen.generate(c.prompt, c.maxNewTokens)
            assertArrayEquals(c.promptIds, r.promptIds, "case ${c.name}: prompt ids")
            assertArrayEquals(expected, r.newIds, "case ${c.name}: greedy ids differ from rgmobile's Python runtime")
        }
    }

    @ParameterizedTest
    @ValueSource(strings = ["RGMOBILE_BUNDLE_FP32", "RGMOBILE_BUNDLE_INT4", "RGMOBILE_BUNDLE_PER_LENGTH"])
    fun `the bundle's self-test passes`(which: String) {
        val (b, be) = backend(which)
        val r = SelfTestRunner(be, b.tokenizer, b.manifest.eosId).run(b.selftest!!)
        assertTrue(r.passed, r.summary() + " " + r.failures)
        assertEquals(0, r.tokenizerMismatches)
    }

    /** The default export: decode and prefill name one `step.onnx` (token dim symbolic), opened once. */
    @Test
    fun `a one-program bundle runs both step lengths on one session with the two-file bundle's tokens`() {
        val (one, be) = backend("RGMOBILE_BUNDLE_FP32")
        assertEquals(1, one.manifest.programs.values.map { it.file }.distinct().size, "programs ${one.manifest.programs}")
        assertEquals(1, be.sessionCount)
        assertEquals((one.manifest.prefillChunk downTo 1).toList(), be.seqLens) // prefill runs 2..chunk: tails in one call
        val (two, twoBe) = backend("RGMOBILE_BUNDLE_PER_LENGTH") // the same weights, one graph per step length
        assertEquals(2, twoBe.sessionCount)
        val cases = one.selftest!!.cases
        assertTrue(cases.any { c -> planChunks(c.promptIds.size, be.seqLens).any { it > 1 } }, "no case runs a prefill chunk")
        for (c in cases) {
            val want = Generator(two, twoBe).generate(c.prompt, c.maxNewTokens).newIds
            assertArrayEquals(want, Generator(one, be).generate(c.prompt, c.maxNewTokens).newIds,
                "case ${c.name}: the one-program bundle's greedy ids differ from the two-file bundle's")
        }
        val fresh = OnnxBackend(one, threads = 1)
        assertEquals(1, fresh.sessionCount)
        fresh.close()
        assertEquals(0, fresh.sessionCount)
    }

    @ParameterizedTest
    @ValueSource(strings = ["RGMOBILE_BUNDLE_FP32", "RGMOBILE_BUNDLE_INT4"])
    fun `saving after k tokens and resuming gives the uninterrupted tokens`(which: String, @TempDir tmp: File) {
        val (b, be) = backend(which)
        val gen = Generator(b, be)
        val prompt = b.selftest!!.cases.last().prompt
        val n = 2 * b.manifest.window + 5
        val k = 37
        val full = gen.generate(prompt, n).newIds
        val f = File(tmp, "s.rgstate")
        val first = gen.generate(prompt, k, saveState = f)
        assertArrayEquals(full.copyOf(k), first.newIds)
        val saved = StateFile.load(f, b.manifest.identity, b.manifest.io)
        assertEquals(first.promptIds.size + k - 1, saved.position)
        val second = gen.generate("", n - k, resume = saved)
        assertArrayEquals(full.copyOfRange(k, n), second.newIds)
    }

    /** Each step's logits cut to the last position's row: what a program exported with last-position logits returns. */
    private class LastRowOnly(val inner: Backend) : Backend by inner {
        override fun step(inputIds: LongArray, positionIds: LongArray, state: State): StepOutput {
            val out = inner.step(inputIds, positionIds, state)
            return StepOutput(out.lastRow(), out.tokens, out.vocab, out.state)
        }
    }

    @ParameterizedTest
    @ValueSource(strings = ["RGMOBILE_BUNDLE_FP32"])
    fun `steps returning only the last position's logits give the same tokens and self-test`(which: String) {
        val (b, be) = backend(which)
        val last = LastRowOnly(be)
        val st = b.selftest!!
        assertTrue(st.cases.any { c -> planChunks(c.promptIds.size, be.seqLens).any { it > 1 } }, "no case runs a prefill chunk")
        val cfg = SamplingConfig(temperature = 0.9, topK = 40, seed = 42)
        for (c in st.cases) {
            assertArrayEquals(Generator(b, be).generate(c.prompt, 24).newIds, Generator(b, last).generate(c.prompt, 24).newIds, c.name)
            assertArrayEquals(Generator(b, be).generate(c.prompt, 24, cfg).newIds, Generator(b, last).generate(c.prompt, 24, cfg).newIds, c.name)
        }
        val full = SelfTestRunner(be, b.tokenizer, b.manifest.eosId).run(st)
        assertEquals(full, SelfTestRunner(last, b.tokenizer, b.manifest.eosId).run(st))
    }

    @ParameterizedTest
    @ValueSource(strings = ["RGMOBILE_BUNDLE_FP32"])
    fun `seeded sampling through the engine is reproducible`(which: String) {
        val (b, be) = backend(which)
        val gen = Generator(b, be)
        val cfg = SamplingConfig(temperature = 0.9, topK = 40, topP = 0.95, seed = 42)
        val a = gen.generate("The river", 48, cfg).newIds
        val c = gen.generate("The river", 48, cfg).newIds
        assertArrayEquals(a, c)
        val d = gen.generate("The river", 48, cfg.copy(seed = 43)).newIds
        assertTrue(!a.contentEquals(d), "seeds 42 and 43 gave the same 48 tokens")
    }
}
