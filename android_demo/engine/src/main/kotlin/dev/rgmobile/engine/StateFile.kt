package dev.rgmobile.engine

import java.io.File
import java.io.IOException
import java.nio.ByteBuffer
import java.nio.ByteOrder

/** Tokens so far and the state after all but the last of them (docs/bundle.md "Saved states"). */
class SavedState(val tokenIds: IntArray, val arrays: Map<String, HostTensor>, val identity: Identity) {
    /** Absolute position of the last token, the next one to run. */
    val position: Int get() = tokenIds.size - 1
}

/**
 * `*.rgstate` files (schema 1): safetensors (8-byte little-endian header length, JSON header,
 * raw little-endian data), tensors `token_ids` (int64 [n]) and every IOSpec state input, string
 * metadata `rgmobile.*`. runtime_py/state_file.py is the reference reader and writer.
 */
object StateFile {
    const val FORMAT = "rgmobile-state"
    const val SCHEMA_VERSION = 1
    const val TOKENS = "token_ids"
    private const val MAX_HEADER_BYTES = 1 shl 20
    private val ST_DTYPES = mapOf("float32" to "F32", "float16" to "F16", "int64" to "I64")

    /** Write [state] atomically (temp file + rename); returns the file's size. */
    fun save(file: File, state: SavedState, io: IOSpec): Long {
        if (state.tokenIds.isEmpty()) fail("cannot save a state without tokens (the invariant needs the last sampled token)")
        val tensors = LinkedHashMap<String, HostTensor>()
        val tok = ByteBuffer.allocate(8 * state.tokenIds.size).order(ByteOrder.LITTLE_ENDIAN)
        state.tokenIds.forEach { tok.putLong(it.toLong()) }
        tok.flip()
        tensors[TOKENS] = HostTensor("int64", longArrayOf(state.tokenIds.size.toLong()), tok)
        for (s in io.stateInputs) {
            val h = state.arrays[s.name] ?: fail("cannot save the state: ${s.name} is missing")
            val want = s.concreteShape()
            if (!h.shape.contentEquals(want)) fail("cannot save the state: ${s.name} is shaped ${h.shape.toList()}, the io spec says ${want.toList()}")
            tensors[s.name] = convert(h, s.dtype, s.name)
        }
        val header = LinkedHashMap<String, Any?>()
        var offset = 0L
        for ((name, h) in tensors) {
            val n = h.byteSize.toLong()
            header[name] = mapOf("dtype" to ST_DTYPES.getValue(h.dtype), "shape" to h.shape.toList(), "data_offsets" to listOf(offset, offset + n))
            offset += n
        }
        header["__metadata__"] = linkedMapOf(
            "rgmobile.format" to FORMAT,
            "rgmobile.schema_version" to SCHEMA_VERSION.toString(),
            "rgmobile.position" to state.position.toString(),
            "rgmobile.config_sha256" to state.identity.configSha256,
            "rgmobile.weights_sha256" to state.identity.weightsSha256,
            "rgmobile.precision" to state.identity.precision,
        )
        var headerBytes = Json.write(header).toByteArray(Charsets.UTF_8)
        val pad = (8 - headerBytes.size % 8) % 8 // safetensors pads the header with spaces to 8 bytes
        if (pad > 0) headerBytes += ByteArray(pad) { ' '.code.toByte() }
        val tmp = File(file.absoluteFile.parentFile, ".${file.name}.tmp")
        try {
            tmp.outputStream().buffered().use { out ->
                val len = ByteBuffer.allocate(8).order(ByteOrder.LITTLE_ENDIAN).putLong(headerBytes.size.toLong())
                out.write(len.array())
                out.write(headerBytes)
                for (h in tensors.values) {
                    val d = h.data.duplicate()
                    val arr = ByteArray(d.remaining()); d.get(arr); out.write(arr)
                }
            }
            if (!tmp.renameTo(file)) {
                file.delete()
                if (!tmp.renameTo(file)) fail("cannot write the state file $file")
            }
        } catch (e: IOException) {
            tmp.delete()
            fail("cannot write the state file $file (${e.message})")
        }
        return file.length()
    }

    /** Read and check a state file against the opener's [identity] and [io]. */
    fun load(file: File, identity: Identity?, io: IOSpec): SavedState {
        val raw = try { file.readBytes() } catch (e: IOException) { fail("$file: cannot read the state file (${e.message})") }
        if (raw.size < 8) fail("$file: not a state file (too short to be safetensors)")
        val size = ByteBuffer.wrap(raw, 0, 8).order(ByteOrder.LITTLE_ENDIAN).long
        if (size < 0 || size > MAX_HEADER_BYTES || 8 + size > raw.size) fail("$file: not a state file or truncated (header of $size bytes in a ${raw.size}-byte file)")
        val headerText = String(raw, 8, size.toInt(), Charsets.UTF_8)
        val header = try {
            JObj.asMap(Json.parse(headerText, "$file header"), "$file: not a state file (header is not a JSON object)")
        } catch (e: RgMobileException) {
            fail("$file: not a state file (its header is not JSON)")
        }
        @Suppress("UNCHECKED_CAST")
        val meta = header["__metadata__"] as? Map<String, Any?>
        if (meta == null || meta["rgmobile.format"] != FORMAT) {
            fail("$file: not an rgmobile state (format ${meta?.get("rgmobile.format")}, expected '$FORMAT')")
        }
        val version = (meta["rgmobile.schema_version"] as? String)?.toIntOrNull() ?: fail("$file: invalid rgmobile.schema_version")
        if (version > SCHEMA_VERSION) fail("$file: state schema_version $version is newer than this app reads ($SCHEMA_VERSION); upgrade the app")
        if (version < 1) fail("$file: invalid rgmobile.schema_version $version")
        fun m(k: String) = (meta["rgmobile.$k"] as? String)?.takeIf { it.isNotEmpty() } ?: fail("$file: metadata has no rgmobile.$k")
        val saved = Identity(m("config_sha256"), m("weights_sha256"), m("precision"))
        if (identity == null) fail("the bundle's manifest has no identity (made by an older rgmobile); re-package it to resume states")
        when {
            saved.configSha256 != identity.configSha256 -> fail("$file: this state does not belong to the model being run: it was saved from a model with a different config")
            saved.weightsSha256 != identity.weightsSha256 -> fail("$file: this state does not belong to the model being run: it was saved from a model with different weights")
            saved.precision != identity.precision -> fail("$file: this state does not belong to the model being run: it was saved at precision '${saved.precision}', this model runs '${identity.precision}'")
        }
        val dataStart = 8 + size.toInt()
        val tensors = HashMap<String, HostTensor>()
        for ((name, v) in header) {
            if (name == "__metadata__") continue
            val o = JObj(JObj.asMap(v, "$file: tensor $name header must be an object"), "$file: $name")
            val dtype = ST_DTYPES.entries.firstOrNull { it.value == o.str("dtype") }?.key ?: fail("$file: tensor $name has unsupported dtype ${o.str("dtype")}")
            val shape = o.list("shape").map { it as? Long ?: fail("$file: tensor $name has a bad shape") }.toLongArray()
            val offs = o.list("data_offsets").map { it as? Long ?: fail("$file: tensor $name has bad data_offsets") }
            val count = shape.fold(1L) { a, b -> a * b }
            if (offs.size != 2 || offs[0] < 0 || offs[1] - offs[0] != count * HostTensor.itemSize(dtype) || dataStart + offs[1] > raw.size) {
                fail("$file: not a valid safetensors file or truncated (tensor $name)")
            }
            tensors[name] = HostTensor(dtype, shape, ByteBuffer.wrap(raw, dataStart + offs[0].toInt(), (offs[1] - offs[0]).toInt()).slice())
        }
        val tok = tensors.remove(TOKENS)
        if (tok == null || tok.dtype != "int64" || tok.shape.size != 1 || tok.shape[0] == 0L) fail("$file: $TOKENS must be a non-empty int64 vector")
        val lb = tok.data.duplicate().order(ByteOrder.LITTLE_ENDIAN)
        val tokens = IntArray(tok.shape[0].toInt()) { lb.getLong(it * 8).toInt() }
        val position = (meta["rgmobile.position"] as? String)?.toIntOrNull()
        if (position != tokens.size - 1) fail("$file: rgmobile.position '${meta["rgmobile.position"]}' breaks the invariant position == len(token_ids) - 1 (${tokens.size - 1})")
        val arrays = LinkedHashMap<String, HostTensor>()
        for (s in io.stateInputs) {
            val h = tensors.remove(s.name) ?: fail("$file: state tensor ${s.name} is missing")
            val want = s.concreteShape()
            if (!h.shape.contentEquals(want)) fail("$file: state tensor ${s.name} is ${h.shape.toList()}, this model needs ${want.toList()}")
            val floats = setOf("float32", "float16")
            if (h.dtype != s.dtype && !(h.dtype in floats && s.dtype in floats)) fail("$file: state tensor ${s.name} is ${h.dtype}, this model needs ${s.dtype}")
            arrays[s.name] = convert(h, s.dtype, s.name)
        }
        if (tensors.isNotEmpty()) fail("$file: unexpected tensors ${tensors.keys.sorted().take(3)} (not in this model's io spec)")
        return SavedState(tokens, arrays, saved)
    }

    /** [h] in [dtype]: float32 <-> float16 converted, anything else must already match. */
    private fun convert(h: HostTensor, dtype: String, name: String): HostTensor {
        if (h.dtype == dtype) return h
        val src = h.data.duplicate().order(ByteOrder.LITTLE_ENDIAN)
        return when {
            h.dtype == "float16" && dtype == "float32" -> {
                val out = ByteBuffer.allocate(src.remaining() * 2).order(ByteOrder.LITTLE_ENDIAN)
                while (src.hasRemaining()) out.putFloat(Half.toFloat(src.short))
                out.flip(); HostTensor(dtype, h.shape, out)
            }
            h.dtype == "float32" && dtype == "float16" -> {
                val out = ByteBuffer.allocate(src.remaining() / 2).order(ByteOrder.LITTLE_ENDIAN)
                while (src.hasRemaining()) out.putShort(Half.fromFloat(src.float))
                out.flip(); HostTensor(dtype, h.shape, out)
            }
            else -> fail("state tensor $name is ${h.dtype}, this model needs $dtype")
        }
    }
}

/** IEEE 754 binary16 <-> float32 (round to nearest even), for state files across precisions. */
object Half {
    fun toFloat(h: Short): Float {
        val bits = h.toInt() and 0xffff
        val sign = (bits and 0x8000) shl 16
        val exp = (bits ushr 10) and 0x1f
        val mant = bits and 0x3ff
        return when (exp) {
            0 -> (if (sign != 0) -1f else 1f) * mant * Math.scalb(1f, -24) // zero and subnormals
            31 -> java.lang.Float.intBitsToFloat(sign or 0x7f800000 or (mant shl 13))
            else -> java.lang.Float.intBitsToFloat(sign or ((exp + 112) shl 23) or (mant shl 13))
        }
    }

    fun fromFloat(f: Float): Short {
        val bits = java.lang.Float.floatToRawIntBits(f)
        val sign = (bits ushr 16) and 0x8000
        val abs = bits and 0x7fffffff
        if (abs >= 0x7f800000) return (sign or 0x7c00 or (if (abs > 0x7f800000) 0x200 else 0)).toShort() // inf/nan
        if (abs >= 0x477ff000) return (sign or 0x7c00).toShort() // overflow to inf
        if (abs < 0x38800000) { // subnormal half (or zero)
            val v = Math.rint(java.lang.Float.intBitsToFloat(abs) * Math.scalb(1.0, 24)).toInt() // round half even
            return (sign or v).toShort()
        }
        val e = (abs ushr 23) - 112
        val m = abs and 0x7fffff
        var h = (e shl 10) or (m ushr 13)
        val rest = m and 0x1fff
        if (rest > 0x1000 || (rest == 0x1000 && (h and 1) == 1)) h += 1
        return (sign or h).toShort()
    }
}
