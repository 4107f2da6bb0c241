package dev.rgmobile.engine

import org.junit.jupiter.api.Assertions.assertArrayEquals
import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.Test
import org.junit.jupiter.api.assertThrows
import org.junit.jupiter.api.io.TempDir
import java.io.File
import java.nio.ByteBuffer
import java.nio.ByteOrder

class StateFileTest {
    @TempDir lateinit var tmp: File

    private val io = IOSpec(
        listOf(
            TensorSpec("input_ids", "int64", listOf("batch", "seq"), "tokens", null, null),
            TensorSpec("position_ids", "int64", listOf("batch", "seq"), "positions", null, null),
            TensorSpec("past_key_values.0.conv_state", "float32", listOf("batch", 3L, 4L), "state", "present.0.conv_state", "zeros"),
            TensorSpec("past_key_values.0.recurrent_state", "float32", listOf("batch", 4L), "state", "present.0.recurrent_state", "zeros"),
        ),
        listOf(),
    )
    private val id = Identity("c".repeat(64), "w".repeat(64), "fp32")

    private fun floats(vararg v: Float, shape: LongArray): HostTensor {
        val b = ByteBuffer.allocate(4 * v.size).order(ByteOrder.LITTLE_ENDIAN); v.forEach { b.putFloat(it) }; b.flip()
        return HostTensor("float32", shape, b)
    }

    private fun state() = SavedState(
        intArrayOf(2, 651, 17, 9),
        mapOf(
            "past_key_values.0.conv_state" to floats(*FloatArray(12) { it * 0.5f - 1f }, shape = longArrayOf(1, 3, 4)),
            "past_key_values.0.recurrent_state" to floats(1f, -2f, 3.25f, 1e-8f, shape = longArrayOf(1, 4)),
        ),
        id,
    )

    private fun floatsOf(h: HostTensor): FloatArray { val b = h.data.duplicate().order(ByteOrder.LITTLE_ENDIAN); return FloatArray(b.remaining() / 4) { b.float } }

    @Test fun `save and load round trip`() {
        val f = File(tmp, "s.rgstate")
        StateFile.save(f, state(), io)
        val back = StateFile.load(f, id, io)
        assertArrayEquals(intArrayOf(2, 651, 17, 9), back.tokenIds)
        assertEquals(3, back.position)
        for ((k, v) in state().arrays) assertArrayEquals(floatsOf(v), floatsOf(back.arrays.getValue(k)))
        // safetensors layout: 8-byte little-endian header length, then JSON
        val raw = f.readBytes()
        val n = ByteBuffer.wrap(raw, 0, 8).order(ByteOrder.LITTLE_ENDIAN).long
        assertTrue(String(raw, 8, n.toInt()).contains("\"rgmobile.format\":\"rgmobile-state\""))
    }

    @Test fun `another model's state is refused`() {
        val f = File(tmp, "s.rgstate")
        StateFile.save(f, state(), io)
        val e = assertThrows<RgMobileException> { StateFile.load(f, id.copy(weightsSha256 = "x".repeat(64)), io) }
        assertTrue(e.message!!.contains("different weights"), e.message)
        val e2 = assertThrows<RgMobileException> { StateFile.load(f, id.copy(precision = "int4"), io) }
        assertTrue(e2.message!!.contains("precision"), e2.message)
    }

    @Test fun `newer schema, garbage and truncation are typed errors`() {
        val f = File(tmp, "s.rgstate")
        StateFile.save(f, state(), io)
        val raw = f.readBytes()
        val text = String(raw, Charsets.ISO_8859_1).replace("\"rgmobile.schema_version\":\"1\"", "\"rgmobile.schema_version\":\"9\"")
        File(tmp, "new.rgstate").writeBytes(text.toByteArray(Charsets.ISO_8859_1))
        assertTrue(assertThrows<RgMobileException> { StateFile.load(File(tmp, "new.rgstate"), id, io) }.message!!.contains("newer"))
        File(tmp, "cut.rgstate").writeBytes(raw.copyOf(raw.size - 5))
        assertThrows<RgMobileException> { StateFile.load(File(tmp, "cut.rgstate"), id, io) }
        File(tmp, "junk.rgstate").writeBytes(ByteArray(100) { 7 })
        assertThrows<RgMobileException> { StateFile.load(File(tmp, "junk.rgstate"), id, io) }
    }

    @Test fun `float16 conversion round trips exactly representable values`() {
        for (v in listOf(0f, -0f, 1f, -2.5f, 65504f, 6.1035156e-5f, 5.9604645e-8f, 0.33325195f)) {
            assertEquals(v, Half.toFloat(Half.fromFloat(v)), "value $v")
        }
        assertEquals(Float.POSITIVE_INFINITY, Half.toFloat(Half.fromFloat(1e6f)))
        assertEquals(1f, Half.toFloat(Half.fromFloat(1.0004883f))) // halfway rounds to even
    }
}
