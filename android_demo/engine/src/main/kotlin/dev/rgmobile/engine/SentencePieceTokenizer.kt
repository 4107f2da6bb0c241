package dev.rgmobile.engine

import java.io.ByteArrayOutputStream
import java.io.File
import java.io.IOException
import java.util.PriorityQueue

/**
 * A SentencePiece BPE tokenizer read from `tokenizer.model` (the protobuf ModelProto), enough for
 * Gemma-style models: identity normalization (escape spaces as U+2581, optional dummy prefix),
 * BPE merges by piece score, byte fallback for characters without a piece, and decode that joins
 * byte pieces `<0xXX>` into UTF-8. It must equal Python `sentencepiece` on the bundle's golden
 * strings (selftest.json "tokenizer"); the self-test checks that on every run.
 */
class SentencePieceTokenizer private constructor(
    private val pieces: Array<String>,
    private val scores: FloatArray,
    private val types: IntArray,
    val unkId: Int,
    val bosId: Int,
    val eosId: Int,
    val padId: Int,
    private val addDummyPrefix: Boolean,
    private val removeExtraWhitespaces: Boolean,
    private val escapeWhitespaces: Boolean,
    private val byteFallback: Boolean,
    private val unkSurface: String,
    /** Why this engine cannot run the model (a normalizer or model type it does not implement), or null. */
    val unsupported: String?,
) {
    val vocabSize: Int get() = pieces.size
    private val normalIds = HashMap<String, Int>() // NORMAL, USER_DEFINED and UNUSED pieces: the ones merges produce
    private val byteIds = IntArray(256) { -1 }
    // USER_DEFINED pieces by first character, longest first: matched whole before any merge and
    // never merged further (sentencepiece's prefix matcher + frozen symbols).
    private val userDefined = HashMap<Char, MutableList<String>>()

    init {
        for (i in pieces.indices) {
            when (types[i]) {
                NORMAL, USER_DEFINED, UNUSED -> {
                    normalIds.putIfAbsent(pieces[i], i)
                    if (types[i] == USER_DEFINED && pieces[i].isNotEmpty()) userDefined.getOrPut(pieces[i][0]) { ArrayList() }.add(pieces[i])
                }
                BYTE -> {
                    val b = parseBytePiece(pieces[i]) ?: fail("tokenizer: byte piece '${pieces[i]}' is not <0xXX>")
                    byteIds[b] = i
                }
            }
        }
        userDefined.values.forEach { l -> l.sortByDescending { it.length } }
        if (byteFallback && byteIds.any { it < 0 }) fail("tokenizer: byte_fallback is on but not all 256 byte pieces exist")
    }

    fun piece(id: Int): String = pieces[id]

    /** Fail with one line when the model needs something this engine does not implement. */
    fun requireSupported(where: String) {
        if (unsupported != null) fail("$where: this SentencePiece model $unsupported, which this engine does not implement")
    }

    /** Token ids of [text]; BOS first when [addBos]. */
    fun encode(text: String, addBos: Boolean = true): IntArray {
        requireSupported("tokenizer")
        val out = ArrayList<Int>()
        if (addBos && bosId >= 0) out.add(bosId)
        val normalized = normalize(text)
        if (normalized.isEmpty()) return out.toIntArray()
        // Symbols: one per code point, linked; merged greedily by the best-scoring adjacent pair
        // (ties: the leftmost pair), as sentencepiece's bpe_model.cc does.
        val syms = ArrayList<String>()
        val frozenList = ArrayList<Boolean>()
        var i = 0
        while (i < normalized.length) {
            val user = userDefined[normalized[i]]?.firstOrNull { normalized.startsWith(it, i) }
            val n = user?.length ?: Character.charCount(normalized.codePointAt(i))
            syms.add(normalized.substring(i, i + n)); frozenList.add(user != null); i += n
        }
        val piece = syms.toTypedArray<String?>()
        val frozen = frozenList.toBooleanArray()
        val prev = IntArray(piece.size) { it - 1 }
        val next = IntArray(piece.size) { if (it + 1 < piece.size) it + 1 else -1 }
        data class Pair(val left: Int, val right: Int, val score: Float, val text: String)
        val agenda = PriorityQueue<Pair>(compareByDescending<Pair> { it.score }.thenBy { it.left })
        fun maybeAdd(l: Int, r: Int) {
            if (l < 0 || r < 0 || frozen[l] || frozen[r]) return
            val merged = piece[l]!! + piece[r]!!
            val id = normalIds[merged] ?: return
            agenda.add(Pair(l, r, scores[id], merged))
        }
        for (k in 1 until piece.size) maybeAdd(k - 1, k)
        while (agenda.isNotEmpty()) {
            val top = agenda.poll()
            val l = piece[top.left]; val r = piece[top.right]
            if (l == null || r == null || next[top.left] != top.right || l + r != top.text) continue // stale pair
            piece[top.left] = top.text
            piece[top.right] = null
            next[top.left] = next[top.right]
            if (next[top.right] >= 0) prev[next[top.right]] = top.left
            maybeAdd(prev[top.left], top.left)
            maybeAdd(top.left, next[top.left])
        }
        var k = 0
        while (k != -1) {
            val p = piece[k]!!
            val id = normalIds[p]
            if (id != null) out.add(id)
            else if (byteFallback) for (b in p.toByteArray(Charsets.UTF_8)) out.add(byteIds[b.toInt() and 0xff])
            else out.add(unkId)
            k = next[k]
        }
        return out.toIntArray()
    }

    private fun normalize(text: String): String {
        var s = text
        if (removeExtraWhitespaces) s = s.trim(' ').replace(Regex(" +"), " ")
        if (s.isEmpty()) return s
        if (addDummyPrefix) s = " $s"
        if (escapeWhitespaces) s = s.replace(' ', SPACE)
        return s
    }

    /** Text of [ids]: control ids vanish, byte pieces join into UTF-8 (invalid bytes become U+FFFD each). */
    fun decode(ids: IntArray): String {
        val sb = StringBuilder()
        val bytes = ByteArrayOutputStream()
        fun flushBytes() {
            if (bytes.size() > 0) { appendUtf8(sb, bytes.toByteArray()); bytes.reset() }
        }
        var first = true
        for (id in ids) {
            if (id < 0 || id >= pieces.size) fail("decode: token id $id is outside the vocabulary (0..${pieces.size - 1})")
            when (types[id]) {
                CONTROL -> continue
                BYTE -> { bytes.write(parseBytePiece(pieces[id])!!); first = false; continue }
            }
            flushBytes()
            var p = if (types[id] == UNKNOWN) unkSurface else pieces[id]
            if (first && (addDummyPrefix || removeExtraWhitespaces) && p.startsWith(SPACE)) p = p.substring(1)
            first = false
            sb.append(if (escapeWhitespaces) p.replace(SPACE, ' ') else p)
        }
        flushBytes()
        return sb.toString()
    }

    companion object {
        const val NORMAL = 1; const val UNKNOWN = 2; const val CONTROL = 3
        const val USER_DEFINED = 4; const val UNUSED = 5; const val BYTE = 6
        private const val SPACE = '\u2581'
        private const val BPE = 2

        fun load(file: File): SentencePieceTokenizer {
            if (!file.isFile) fail("tokenizer: $file not found (expected a SentencePiece tokenizer.model)")
            val data = try { file.readBytes() } catch (e: IOException) { fail("tokenizer: cannot read $file (${e.message})") }
            return try {
                parse(data)
            } catch (e: ProtoException) {
                fail("tokenizer: $file is not a SentencePiece model (${e.message}); the bundle needs its tokenizer.model")
            }
        }

        fun parse(data: ByteArray): SentencePieceTokenizer {
            val pieces = ArrayList<String>(); val scores = ArrayList<Float>(); val types = ArrayList<Int>()
            var modelType = 1; var byteFallback = false
            var unk = 0; var bos = 1; var eos = 2; var pad = -1; var unkSurface = " \u2047 "
            var dummy = true; var extra = true; var escape = true
            var trainerSeen = false
            var normalizer = "identity"; var charsmap = false
            val r = Proto(data, 0, data.size)
            while (r.more()) {
                val (field, wire) = r.tag()
                when {
                    field == 1 && wire == 2 -> {
                        val m = r.sub()
                        var piece: String? = null; var score = 0f; var type = NORMAL
                        while (m.more()) {
                            val (f, w) = m.tag()
                            when {
                                f == 1 && w == 2 -> piece = m.string()
                                f == 2 && w == 5 -> score = m.float()
                                f == 3 && w == 0 -> type = m.varint().toInt()
                                else -> m.skip(w)
                            }
                        }
                        pieces.add(piece ?: throw ProtoException("a piece without text")); scores.add(score); types.add(type)
                    }
                    field == 2 && wire == 2 -> {
                        trainerSeen = true
                        val m = r.sub()
                        while (m.more()) {
                            val (f, w) = m.tag()
                            when {
                                f == 3 && w == 0 -> modelType = m.varint().toInt()
                                f == 35 && w == 0 -> byteFallback = m.varint() != 0L
                                f == 40 && w == 0 -> unk = m.varint().toInt()
                                f == 41 && w == 0 -> bos = m.varint().toInt()
                                f == 42 && w == 0 -> eos = m.varint().toInt()
                                f == 43 && w == 0 -> pad = m.varint().toInt()
                                f == 44 && w == 2 -> unkSurface = m.string()
                                else -> m.skip(w)
                            }
                        }
                    }
                    field == 3 && wire == 2 -> {
                        val m = r.sub()
                        while (m.more()) {
                            val (f, w) = m.tag()
                            when {
                                f == 1 && w == 2 -> normalizer = m.string()
                                f == 2 && w == 2 -> charsmap = m.bytes().isNotEmpty()
                                f == 3 && w == 0 -> dummy = m.varint() != 0L
                                f == 4 && w == 0 -> extra = m.varint() != 0L
                                f == 5 && w == 0 -> escape = m.varint() != 0L
                                else -> m.skip(w)
                            }
                        }
                    }
                    else -> r.skip(wire)
                }
            }
            if (pieces.isEmpty() || !trainerSeen) throw ProtoException("no pieces or trainer spec")
            val unsupported = when {
                modelType != BPE -> "is not BPE (model type $modelType)"
                normalizer != "identity" || charsmap -> "uses the '$normalizer' normalizer (only 'identity' is implemented)"
                else -> null
            }
            // Ids from the trainer spec (the model's own special ids; pad -1 = none).
            return SentencePieceTokenizer(
                pieces.toTypedArray(), scores.toFloatArray(), types.toIntArray(), unk, bos, eos, pad,
                dummy, extra, escape, byteFallback, unkSurface, unsupported,
            )
        }

        private fun parseBytePiece(p: String): Int? =
            if (p.length == 6 && p.startsWith("<0x") && p.endsWith(">")) p.substring(3, 5).toIntOrNull(16) else null

        /** UTF-8 decode as sentencepiece does: a byte that does not start a valid sequence becomes one U+FFFD. */
        internal fun appendUtf8(sb: StringBuilder, b: ByteArray) {
            var i = 0
            while (i < b.size) {
                val c = b[i].toInt() and 0xff
                val (len, min) = when {
                    c < 0x80 -> 1 to 0
                    c in 0xC2..0xDF -> 2 to 0x80
                    c in 0xE0..0xEF -> 3 to 0x800
                    c in 0xF0..0xF4 -> 4 to 0x10000
                    else -> 0 to 0
                }
                var cp = if (len == 1) c else if (len == 2) c and 0x1f else if (len == 3) c and 0x0f else c and 0x07
                var ok = len > 0 && i + len <= b.size
                if (ok) {
                    for (k in 1 until len) {
                        val cc = b[i + k].toInt() and 0xff
                        if (cc and 0xC0 != 0x80) { ok = false; break }
                        cp = (cp shl 6) or (cc and 0x3f)
                    }
                }
                if (ok && (cp < min || cp > 0x10FFFF || cp in 0xD800..0xDFFF)) ok = false
                if (ok) { sb.appendCodePoint(cp); i += len } else { sb.append('\uFFFD'); i += 1 }
            }
        }
    }
}

internal class ProtoException(message: String) : Exception(message)

/** A minimal protobuf wire-format reader (varint, fixed32, length-delimited). */
private class Proto(val b: ByteArray, var pos: Int, val end: Int) {
    fun more() = pos < end
    fun varint(): Long {
        var result = 0L; var shift = 0
        while (true) {
            if (pos >= end) throw ProtoException("truncated varint")
            val x = b[pos++].toInt() and 0xff
            result = result or ((x and 0x7f).toLong() shl shift)
            if (x < 0x80) return result
            shift += 7
            if (shift > 63) throw ProtoException("varint too long")
        }
    }
    fun tag(): kotlin.Pair<Int, Int> { val t = varint(); return (t ushr 3).toInt() to (t and 7).toInt() }
    fun length(): Int {
        val n = varint()
        if (n < 0 || pos + n > end) throw ProtoException("length $n past the end")
        return n.toInt()
    }
    fun sub(): Proto { val n = length(); val p = Proto(b, pos, pos + n); pos += n; return p }
    fun bytes(): ByteArray { val n = length(); val out = b.copyOfRange(pos, pos + n); pos += n; return out }
    fun string(): String = String(bytes(), Charsets.UTF_8)
    fun float(): Float {
        if (pos + 4 > end) throw ProtoException("truncated fixed32")
        val v = (b[pos].toInt() and 0xff) or ((b[pos + 1].toInt() and 0xff) shl 8) or
            ((b[pos + 2].toInt() and 0xff) shl 16) or ((b[pos + 3].toInt() and 0xff) shl 24)
        pos += 4
        return java.lang.Float.intBitsToFloat(v)
    }
    fun skip(wire: Int) {
        when (wire) {
            0 -> varint()
            1 -> { if (pos + 8 > end) throw ProtoException("truncated fixed64"); pos += 8 }
            2 -> { val n = length(); pos += n }
            5 -> { if (pos + 4 > end) throw ProtoException("truncated fixed32"); pos += 4 }
            else -> throw ProtoException("unsupported wire type $wire")
        }
    }
}
