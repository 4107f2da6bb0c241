package dev.rgmobile.engine

import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.Test
import org.junit.jupiter.api.assertThrows
import org.junit.jupiter.api.io.TempDir
import java.io.ByteArrayOutputStream
import java.io.File
import java.nio.file.Files

/** A bad bundle gives one typed error with a clear message. Each test breaks a copy of the fp32 bundle. */
class BundleErrorsTest {
    @TempDir lateinit var tmp: File

    /** A copy of the bundle: small files copied, large ones hard-linked (never modified here). */
    private fun copy(): File {
        val src = TestBundles.dir("RGMOBILE_BUNDLE_FP32")
        val dst = File(tmp, "bundle")
        src.walkTopDown().filter { it.isFile }.forEach { f ->
            val to = File(dst, f.relativeTo(src).path)
            to.parentFile.mkdirs()
            if (f.length() > 1 shl 20) Files.createLink(to.toPath(), f.toPath()) else f.copyTo(to)
        }
        return dst
    }

    private fun expect(dir: File, vararg words: String) {
        val e = assertThrows<RgMobileException> { Bundle.open(dir) }
        val msg = e.message!!
        assertTrue(!msg.contains('\n'), "one line: $msg")
        for (w in words) assertTrue(msg.contains(w), "'$w' not in: $msg")
    }

    /** Rewrite manifest.json's entry for [path] so size and sha256 match the file again. */
    private fun repin(dir: File, path: String) {
        val mf = File(dir, Manifest.NAME)
        @Suppress("UNCHECKED_CAST")
        val m = Json.parse(mf.readText(), "test") as MutableMap<String, Any?>
        val f = File(dir, path)
        m["files"] = (m["files"] as List<Map<String, Any?>>).map {
            if (it["path"] == path) mapOf("path" to path, "size" to f.length(), "sha256" to Bundle.sha256(f)) else it
        }
        mf.writeText(Json.write(m))
    }

    @Test fun `the unbroken copy opens`() { Bundle.open(copy()) }

    @Test fun `missing file`() {
        val d = copy(); File(d, "tokenizer.model").delete()
        expect(d, "tokenizer.model", "missing")
    }

    @Test fun `sha256 mismatch`() {
        val d = copy()
        val f = File(d, "tokenizer.model")
        val b = f.readBytes(); b[b.size / 2] = (b[b.size / 2] + 1).toByte(); f.writeBytes(b) // same size
        expect(d, "sha256", "does not match")
    }

    @Test fun `size mismatch`() {
        val d = copy(); File(d, "README.txt").appendText("x")
        expect(d, "README.txt", "bytes")
    }

    @Test fun `newer schema`() {
        val d = copy()
        val mf = File(d, Manifest.NAME)
        mf.writeText(mf.readText().replaceFirst("\"schema_version\": 1", "\"schema_version\": 2").replaceFirst("\"schema_version\":1", "\"schema_version\":2"))
        expect(d, "schema_version 2 is newer", "upgrade the app")
    }

    @Test fun `malformed json`() {
        val d = copy()
        val mf = File(d, Manifest.NAME)
        mf.writeText(mf.readText().dropLast(20))
        expect(d, "malformed JSON")
    }

    @Test fun `wrong tokenizer vocab`() {
        val d = copy()
        File(d, "tokenizer.model").writeBytes(tinyModel(10))
        repin(d, "tokenizer.model")
        expect(d, "wrong tokenizer", "10 pieces")
    }

    @Test fun `tokenizer that is not SentencePiece`() {
        val d = copy()
        File(d, "tokenizer.model").writeText("{\"model\": {\"type\": \"BPE\"}}")
        repin(d, "tokenizer.model")
        expect(d, "not a SentencePiece model")
    }

    @Test fun `symlink refused`() {
        val d = copy()
        val f = File(d, "README.txt")
        val target = File(tmp, "readme-elsewhere.txt"); f.copyTo(target); f.delete()
        Files.createSymbolicLink(f.toPath(), target.toPath())
        expect(d, "symlink")
    }

    /** The fp32 bundle's manifest.json with the logits output's middle dim set to [dim]. */
    private fun manifestWithLogitsDim(dim: Any): String {
        @Suppress("UNCHECKED_CAST")
        val m = Json.parse(File(TestBundles.dir("RGMOBILE_BUNDLE_FP32"), Manifest.NAME).readText(), "test") as Map<String, Any?>
        @Suppress("UNCHECKED_CAST")
        val logits = ((m["io"] as Map<String, Any?>)["outputs"] as List<MutableMap<String, Any?>>)[0]
        logits["shape"] = (logits["shape"] as List<Any?>).toMutableList().also { it[1] = dim }
        return Json.write(m)
    }

    @Test fun `logits of every position or the last one only`() {
        assertEquals("seq", Manifest.parse(manifestWithLogitsDim("seq"), "m").io.outputs[0].shape[1])
        assertEquals(1L, Manifest.parse(manifestWithLogitsDim(1L), "m").io.outputs[0].shape[1])
        for (bad in listOf<Any>(2L, "1", "batch")) {
            val e = assertThrows<RgMobileException> { Manifest.parse(manifestWithLogitsDim(bad), "m") }
            assertTrue(e.message!!.contains("logits shape must be [batch, seq or 1, vocab], got [batch, $bad, "), e.message)
        }
    }

    /** The fp32 bundle's manifest.json with the prefill program's min_seq_len set to [low] (null: absent). */
    private fun manifestWithMinSeqLen(low: Any?): String {
        @Suppress("UNCHECKED_CAST")
        val m = Json.parse(File(TestBundles.dir("RGMOBILE_BUNDLE_FP32"), Manifest.NAME).readText(), "test") as Map<String, Any?>
        @Suppress("UNCHECKED_CAST")
        val prefill = (m["programs"] as Map<String, MutableMap<String, Any?>>)["prefill"]!!
        if (low == null) prefill.remove("min_seq_len") else prefill["min_seq_len"] = low
        return Json.write(m)
    }

    @Test fun `a prefill program that runs a range of lengths`() {
        val m = Manifest.parse(manifestWithMinSeqLen(2L), "m")
        val chunk = m.prefillChunk
        assertEquals((chunk downTo 1).toList(), m.seqLens)
        assertEquals(listOf(chunk, 3), planChunks(chunk + 3, m.seqLens)) // the remainder is one call
        assertEquals(listOf(chunk, 1, 1, 1), planChunks(chunk + 3, Manifest.parse(manifestWithMinSeqLen(null), "m").seqLens))
        assertEquals("$chunk..1", describeLengths(m.seqLens))
        assertEquals("9..7, 3, 1", describeLengths(listOf(1, 3, 7, 8, 9)))
        for (bad in listOf<Any>(0L, chunk + 1L, "2", true)) {
            val e = assertThrows<RgMobileException> { Manifest.parse(manifestWithMinSeqLen(bad), "m") }
            assertTrue(e.message!!.contains("'min_seq_len' must be an integer from 1 to its seq_len"), e.message)
        }
        val e = assertThrows<RgMobileException> { Manifest.parse(manifestWithMinSeqLen(1L), "m") }
        assertTrue(e.message!!.contains("programs 'decode' and 'prefill' both run 1 tokens per step"), e.message)
    }

    @Test fun `not a bundle`() {
        expect(tmp, "no manifest.json")
    }

    companion object {
        /** A valid SentencePiece BPE ModelProto with [n] pieces (pad, eos, bos, unk, then letters). */
        fun tinyModel(n: Int): ByteArray = modelProto((4 until n).map { ('a' + it).toString() to 0f })

        /** A BPE ModelProto (identity normalizer, no dummy prefix): specials, [normal] pieces with scores, [userDefined]. */
        fun modelProto(normal: List<Pair<String, Float>>, userDefined: List<String> = emptyList()): ByteArray {
            val out = ByteArrayOutputStream()
            fun varint(v: Long, o: ByteArrayOutputStream) { var x = v; while (x >= 0x80) { o.write(((x and 0x7f) or 0x80).toInt()); x = x ushr 7 }; o.write(x.toInt()) }
            fun field(no: Int, body: ByteArray, o: ByteArrayOutputStream) { varint((no shl 3 or 2).toLong(), o); varint(body.size.toLong(), o); o.write(body) }
            val all = listOf("<pad>" to 3, "<eos>" to 3, "<bos>" to 3, "<unk>" to 2) + normal.map { it.first to 1 } + userDefined.map { it to 4 }
            val scores = normal.associate { it.first to it.second }
            for ((piece, type) in all) {
                val p = ByteArrayOutputStream()
                field(1, piece.toByteArray(), p)
                scores[piece]?.let { sc ->
                    varint((2 shl 3 or 5).toLong(), p)
                    val bits = java.lang.Float.floatToIntBits(sc)
                    for (k in 0 until 4) p.write((bits ushr (8 * k)) and 0xff)
                }
                varint((3 shl 3).toLong(), p); varint(type.toLong(), p)
                field(1, p.toByteArray(), out)
            }
            val t = ByteArrayOutputStream()
            varint((3 shl 3).toLong(), t); varint(2, t) // model_type BPE
            for ((no, v) in listOf(40 to 3L, 41 to 2L, 42 to 1L, 43 to 0L)) { varint((no shl 3).toLong(), t); varint(v, t) }
            field(2, t.toByteArray(), out)
            val ns = ByteArrayOutputStream(); field(1, "identity".toByteArray(), ns)
            varint((3 shl 3).toLong(), ns); varint(0, ns) // add_dummy_prefix false
            varint((4 shl 3).toLong(), ns); varint(0, ns) // remove_extra_whitespaces false
            field(3, ns.toByteArray(), out)
            return out.toByteArray()
        }
    }
}
