package dev.rgmobile.engine

import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.Test
import org.junit.jupiter.api.assertThrows
import org.junit.jupiter.api.io.TempDir
import org.junit.jupiter.params.ParameterizedTest
import org.junit.jupiter.params.provider.ValueSource
import java.io.File

class TokenizerTest {
    /** The golden vectors come from Python sentencepiece (selftest.json "tokenizer"), an independent reference. */
    @ParameterizedTest
    @ValueSource(strings = ["RGMOBILE_BUNDLE_FP32", "RGMOBILE_BUNDLE_INT4"])
    fun `encode and decode equal sentencepiece on every golden string`(which: String) {
        val b = TestBundles.bundle(which)
        val vectors = b.selftest!!.tokenizer
        assertTrue(vectors.size >= 200, "selftest.json has ${vectors.size} tokenizer strings, docs/bundle.md asks for >= 200")
        val bad = vectors.filter { v ->
            !b.tokenizer.encode(v.text, addBos = false).contentEquals(v.ids) || b.tokenizer.decode(v.ids) != v.decoded
        }
        assertEquals(emptyList<String>(), bad.map { it.text }, "strings where Kotlin differs from sentencepiece")
        val cases = b.selftest!!.cases
        for (c in cases) assertTrue(b.tokenizer.encode(c.prompt).contentEquals(c.promptIds), "prompt ids of case ${c.name}")
    }

    @Test
    fun `user-defined pieces match whole and are never merged, merges follow piece scores`() {
        // pieces: 0 <pad>, 1 <eos>, 2 <bos>, 3 <unk>, then normal pieces with scores, a user-defined "<x>"
        val pieces = listOf("a" to -1f, "b" to -2f, "<" to -3f, "x" to -4f, ">" to -5f, "ab" to -6f, "<x" to -0.5f, "\u2581" to -7f)
        val model = BundleErrorsTest.modelProto(pieces, userDefined = listOf("<x>"))
        val tok = SentencePieceTokenizer.parse(model)
        fun id(p: String) = (0 until tok.vocabSize).first { tok.piece(it) == p }
        assertEquals(listOf(id("ab")), tok.encode("ab", addBos = false).toList())
        assertEquals(listOf(id("a"), id("<x>"), id("b")), tok.encode("a<x>b", addBos = false).toList())
        assertEquals(listOf(id("<x"), id("a")), tok.encode("<xa", addBos = false).toList()) // "<x" merges (score -0.5)
        assertEquals(listOf(2, id("a"), id("\u2581"), id("b")), tok.encode("a b").toList())
        assertEquals("a<x>b", tok.decode(intArrayOf(2, id("a"), id("<x>"), id("b"), 1)))
    }

    @Test
    fun `invalid utf8 bytes decode to one replacement character each`() {
        val sb = StringBuilder()
        SentencePieceTokenizer.appendUtf8(sb, byteArrayOf(0x41, 0xE6.toByte(), 0x97.toByte(), 0x42, 0xF0.toByte(), 0x9F.toByte(), 0x99.toByte(), 0x82.toByte()))
        assertEquals("A\uFFFD\uFFFDB\uD83D\uDE42", sb.toString())
    }

    @Test
    fun `a file that is not a SentencePiece model is refused with one typed error`(@TempDir tmp: File) {
        val f = File(tmp, "tokenizer.model").apply { writeText("{\"not\": \"a model\"}") }
        val e = assertThrows<RgMobileException> { SentencePieceTokenizer.load(f) }
        assertTrue(e.message!!.contains("not a SentencePiece model"), e.message)
    }
}
