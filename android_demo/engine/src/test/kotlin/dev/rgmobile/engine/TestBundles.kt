package dev.rgmobile.engine

import org.junit.jupiter.api.Assertions.fail
import org.junit.jupiter.api.Assumptions
import java.io.File

/**
 * Where the bundle tests find their bundles: system property or environment RGMOBILE_BUNDLE_FP32 /
 * RGMOBILE_BUNDLE_INT4 / RGMOBILE_BUNDLE_PER_LENGTH (folders written by `rgmobile package --target android`;
 * FP32 and INT4: the default export, decode and prefill in one `step.onnx`; PER_LENGTH: the fp32 export
 * with `--graph-per-length`, `decode.onnx` and `prefill.onnx`). Absent bundles
 * FAIL the bundle tests, unless RGMOBILE_UNIT_ONLY=1 asks for the unit tests only (then the bundle
 * tests are reported as skipped, never as passed).
 */
object TestBundles {
    private fun setting(name: String): String? =
        (System.getProperty(name)?.takeIf { it.isNotBlank() && !it.startsWith("\${") })
            ?: System.getenv(name)?.takeIf { it.isNotBlank() }

    val unitOnly: Boolean get() = setting("RGMOBILE_UNIT_ONLY") in setOf("1", "true", "yes")

    fun dir(name: String): File {
        val path = setting(name)
        if (path == null) {
            Assumptions.assumeFalse(unitOnly, "unit-only mode (RGMOBILE_UNIT_ONLY): bundle test not run")
            fail<Unit>("$name is not set: the bundle tests need a packaged bundle (set $name=BUNDLE_DIR, or RGMOBILE_UNIT_ONLY=1 to run only the unit tests)")
        }
        val f = File(path!!)
        if (!File(f, Manifest.NAME).isFile) fail<Unit>("$name=$path has no ${Manifest.NAME}")
        return f
    }

    private val cache = HashMap<String, Bundle>()

    fun bundle(name: String): Bundle = synchronized(cache) { cache.getOrPut(name) { Bundle.open(dir(name)) } }

    val names = listOf("RGMOBILE_BUNDLE_FP32", "RGMOBILE_BUNDLE_INT4", "RGMOBILE_BUNDLE_PER_LENGTH")
}
