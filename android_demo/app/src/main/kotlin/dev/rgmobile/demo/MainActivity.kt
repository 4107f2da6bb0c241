package dev.rgmobile.demo

import android.app.Activity
import android.os.Bundle as AndroidBundle
import android.os.Debug
import android.text.InputType
import android.view.View
import android.widget.ArrayAdapter
import android.widget.Button
import android.widget.CheckBox
import android.widget.EditText
import android.widget.LinearLayout
import android.widget.ScrollView
import android.widget.Spinner
import android.widget.TextView
import dev.rgmobile.engine.Backend
import dev.rgmobile.engine.Bundle
import dev.rgmobile.engine.Generator
import dev.rgmobile.engine.OnnxBackend
import dev.rgmobile.engine.RgMobileException
import dev.rgmobile.engine.SamplingConfig
import dev.rgmobile.engine.SelfTestRunner
import dev.rgmobile.engine.StateFile
import java.io.File
import java.util.concurrent.Executors

/**
 * One screen: pick a bundle, type a prompt, watch the text stream with tok/s and memory; run the
 * bundle's self-test; save and restore the conversation state (*.rgstate). Bundles are folders
 * written by `rgmobile package --target android`, pushed with adb (see android_demo/README.md).
 * All model work runs on one background thread; the UI thread only shows results.
 */
class MainActivity : Activity() {
    private val worker = Executors.newSingleThreadExecutor()
    private lateinit var bundleSpinner: Spinner
    private lateinit var prompt: EditText
    private lateinit var maxTokens: EditText
    private lateinit var temperature: EditText
    private lateinit var threads: EditText
    private lateinit var continueBox: CheckBox
    private lateinit var spinBox: CheckBox
    private lateinit var output: TextView
    private lateinit var status: TextView
    private var bundleDirs: List<File> = emptyList()

    private var loaded: Bundle? = null
    private var backend: Backend? = null
    private var generator: Generator? = null

    private fun roots(): List<File> = listOfNotNull(
        File("/data/local/tmp/rgmobile"),
        getExternalFilesDir("bundles"),
        File(filesDir, "bundles"),
    )

    private fun stateFile(name: String) = File(File(filesDir, "states").apply { mkdirs() }, "${loaded?.name ?: "none"}-$name.rgstate")

    override fun onCreate(savedInstanceState: AndroidBundle?) {
        super.onCreate(savedInstanceState)
        val col = LinearLayout(this).apply { orientation = LinearLayout.VERTICAL; setPadding(24, 24, 24, 24) }
        fun row(vararg views: View) = LinearLayout(this).apply { views.forEach { addView(it, LinearLayout.LayoutParams(0, -2, 1f)) } }
        fun button(label: String, action: () -> Unit) = Button(this).apply { text = label; setOnClickListener { action() } }
        fun number(hint: String, value: String, decimal: Boolean = false) = EditText(this).apply {
            this.hint = hint; setText(value)
            inputType = InputType.TYPE_CLASS_NUMBER or (if (decimal) InputType.TYPE_NUMBER_FLAG_DECIMAL else 0)
        }

        bundleSpinner = Spinner(this)
        prompt = EditText(this).apply { hint = "prompt"; setText("Once upon a time"); minLines = 2 }
        maxTokens = number("max new tokens", "128")
        temperature = number("temperature (0 = greedy)", "0", decimal = true)
        threads = number("threads", "4")
        continueBox = CheckBox(this).apply { text = "continue the conversation (resume the last state)" }
        // onnxruntime's idle threads spin-wait by default; off, a decode keeps more of its speed
        // when other apps hold a core (docs/performance.md). Applies at the next Load.
        spinBox = CheckBox(this).apply { text = "spin-wait threads (onnx)"; isChecked = true }
        output = TextView(this).apply { setTextIsSelectable(true); textSize = 15f }
        status = TextView(this).apply { textSize = 12f }

        col.addView(row(bundleSpinner, button("Rescan") { scan() }, button("Copy in") { copyIntoApp() }))
        col.addView(row(threads, spinBox, button("Load") { load() }, button("Self-test") { selfTest() }))
        col.addView(prompt)
        col.addView(row(maxTokens, temperature))
        col.addView(continueBox)
        col.addView(row(button("Generate") { generate() }, button("Stop") { generator?.cancelled = true },
            button("Save state") { saveState() }, button("Restore") { restoreState() }))
        col.addView(status)
        col.addView(ScrollView(this).apply { addView(output) }, LinearLayout.LayoutParams(-1, 0, 1f))
        setContentView(col)
        scan()
    }

    override fun onDestroy() {
        worker.execute { backend?.close() }
        worker.shutdown()
        super.onDestroy()
    }

    private fun scan() {
        bundleDirs = roots().flatMap { r -> r.listFiles()?.filter { File(it, "manifest.json").isFile }.orEmpty() }
        bundleSpinner.adapter = ArrayAdapter(this, android.R.layout.simple_spinner_dropdown_item, bundleDirs.map { it.name + "  (" + it.parent + ")" })
        show(if (bundleDirs.isEmpty()) "no bundles: adb push a bundle folder to ${roots().joinToString(" or ")}" else "${bundleDirs.size} bundle(s) found")
    }

    private fun selected(): File? = bundleDirs.getOrNull(bundleSpinner.selectedItemPosition)

    private fun show(s: String) = runOnUiThread { status.text = s }

    private fun memory(): String {
        val rt = Runtime.getRuntime()
        val java = (rt.totalMemory() - rt.freeMemory()) / (1 shl 20)
        val native = Debug.getNativeHeapAllocatedSize() / (1 shl 20)
        return "java $java MB, native $native MB"
    }

    /** Run [task] on the worker; a typed engine error becomes the status line. */
    private fun background(task: () -> Unit) = worker.execute {
        try {
            task()
        } catch (e: RgMobileException) {
            show("error: ${e.message}")
        } catch (e: RuntimeException) {
            show("unexpected error: $e")
        }
    }

    private fun copyIntoApp() {
        val src = selected() ?: return show("pick a bundle first")
        background {
            val dst = File(File(filesDir, "bundles"), src.name)
            show("copying ${src.name} into app storage...")
            dst.deleteRecursively()
            src.copyRecursively(dst)
            runOnUiThread { scan() }
        }
    }

    private fun load() {
        val dir = selected() ?: return show("pick a bundle first")
        val n = threads.text.toString().toIntOrNull()
        val spin = spinBox.isChecked
        background {
            show("verifying ${dir.name} (sha256 of every file)...")
            backend?.close(); backend = null; generator = null
            val b = Bundle.open(dir)
            val be = when (b.manifest.format) {
                "onnx" -> OnnxBackend(b, n, spin)
                "executorch" -> if (spin) ExecuTorchBackend(b) else throw RgMobileException(
                    "ExecuTorch's threads cannot be told not to spin-wait; tick 'spin-wait threads' for ${dir.name}")
                else -> throw RgMobileException("${dir.name}: format '${b.manifest.format}' does not run on Android (onnx or executorch)")
            }
            loaded = b; backend = be; generator = Generator(b, be)
            show("loaded ${b.name}: ${b.manifest.format} ${b.manifest.precision}, ${be.name}, validation ${b.manifest.validationStatus}; ${memory()}")
        }
    }

    private fun generate() {
        val gen = generator ?: return show("load a bundle first")
        val text = prompt.text.toString()
        val n = maxTokens.text.toString().toIntOrNull() ?: 128
        val temp = temperature.text.toString().toDoubleOrNull() ?: 0.0
        val resumeFile = stateFile("last").takeIf { continueBox.isChecked && it.isFile }
        if (resumeFile == null) output.text = text
        else output.append(text)
        background {
            val b = loaded!!
            val resume = resumeFile?.let { StateFile.load(it, b.manifest.identity, b.manifest.io) }
            val save = if (b.manifest.identity != null) stateFile("last") else null
            val r = gen.generate(text, n, SamplingConfig(temperature = temp), onText = { s -> runOnUiThread { output.append(s) } }, resume = resume, saveState = save)
            show("${r.promptIds.size} prompt tokens in ${"%.2f".format(r.prefillSeconds)} s, ${r.newIds.size} new at " +
                "${"%.1f".format(r.decodeTokensPerSecond)} tok/s${if (r.stoppedOnEos) " (EOS)" else ""}; ${memory()}")
        }
    }

    private fun selfTest() {
        val be = backend ?: return show("load a bundle first")
        background {
            val b = loaded!!
            val st = b.selftest ?: throw RgMobileException("${b.name} has no selftest.json (an artifact, not a bundle)")
            val runner = SelfTestRunner(be, b.tokenizer, b.manifest.eosId).apply { onProgress = { show("self-test: $it") } }
            val r = runner.run(st)
            show((if (r.passed) "PASS " else "FAIL ") + r.summary() + (if (r.failures.isEmpty()) "" else "\n" + r.failures.joinToString("\n")))
        }
    }

    private fun saveState() = background {
        val last = stateFile("last")
        if (!last.isFile) throw RgMobileException("nothing to save yet: generate first")
        last.copyTo(stateFile("saved"), overwrite = true)
        show("state saved (${stateFile("saved").length() / 1024} KB)")
    }

    private fun restoreState() = background {
        val b = loaded ?: throw RgMobileException("load a bundle first")
        val saved = stateFile("saved")
        if (!saved.isFile) throw RgMobileException("no saved state for ${b.name}")
        val s = StateFile.load(saved, b.manifest.identity, b.manifest.io) // checks identity before use
        saved.copyTo(stateFile("last"), overwrite = true)
        val text = b.tokenizer.decode(s.tokenIds)
        runOnUiThread { output.text = text; continueBox.isChecked = true }
        show("restored ${s.tokenIds.size} tokens; Generate continues from them")
    }
}
