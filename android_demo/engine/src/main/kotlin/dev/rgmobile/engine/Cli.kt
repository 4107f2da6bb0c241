package dev.rgmobile.engine

import java.io.File
import java.io.PrintStream
import kotlin.system.exitProcess

/**
 * The desktop twin of the app:
 *   java -jar engine.jar BUNDLE_DIR --prompt TEXT --max-new-tokens N [--temperature T --top-k K --top-p P --seed S]
 *        [--threads N] [--no-spin] [--ids] [--selftest] [--save-state F] [--resume F] [--warmup N]
 * Prints the generated text (or with --ids the generated ids as one JSON line) on stdout, timing on
 * stderr; a bad bundle or option is one line on stderr and exit code 2; a failed self-test exits 1.
 */
object Cli {
    private const val USAGE = "usage: engine.jar BUNDLE_DIR [--prompt TEXT] [--max-new-tokens N] [--temperature T] [--top-k K] " +
        "[--top-p P] [--seed S] [--threads N] [--no-spin] [--ids] [--selftest] [--save-state FILE] [--resume FILE] [--warmup N] | --tokenizer MODEL --encode-json FILE"

    @JvmStatic
    fun main(args: Array<String>) {
        val out = PrintStream(System.out, true, "UTF-8")
        val code = try {
            run(args, out, System.err)
        } catch (e: RgMobileException) {
            System.err.println("error: ${e.message}")
            2
        }
        out.flush()
        exitProcess(code)
    }

    fun run(args: Array<String>, out: PrintStream, err: PrintStream): Int {
        var bundleDir: String? = null
        var prompt: String? = null
        var maxNew = 64; var temperature = 0.0; var topK = 0; var topP = 1.0; var seed: Long? = null
        var threads: Int? = null; var spin = true; var ids = false; var selftest = false; var warmup = 0
        var saveState: File? = null; var resume: File? = null
        var tokenizerFile: File? = null; var encodeJson: File? = null
        var i = 0
        fun value(name: String): String = args.getOrNull(++i) ?: fail("$name needs a value; $USAGE")
        fun <T> num(name: String, parse: (String) -> T?): T { val v = value(name); return parse(v) ?: fail("$name: '$v' is not a valid number") }
        while (i < args.size) {
            when (val a = args[i]) {
                "--prompt" -> prompt = value(a)
                "--max-new-tokens" -> maxNew = num(a, String::toIntOrNull)
                "--temperature" -> temperature = num(a, String::toDoubleOrNull)
                "--top-k" -> topK = num(a, String::toIntOrNull)
                "--top-p" -> topP = num(a, String::toDoubleOrNull)
                "--seed" -> seed = num(a, String::toLongOrNull)
                "--threads" -> threads = num(a, String::toIntOrNull)
                "--warmup" -> warmup = num(a, String::toIntOrNull)
                "--no-spin" -> spin = false
                "--ids" -> ids = true
                "--selftest" -> selftest = true
                "--save-state" -> saveState = File(value(a))
                "--resume" -> resume = File(value(a))
                "--tokenizer" -> tokenizerFile = File(value(a))
                "--encode-json" -> encodeJson = File(value(a))
                "-h", "--help" -> { out.println(USAGE); return 0 }
                else -> if (a.startsWith("--") || bundleDir != null) fail("unknown argument '$a'; $USAGE") else bundleDir = a
            }
            i++
        }
        if (tokenizerFile != null) {
            // Tokenizer only: --tokenizer MODEL --encode-json FILE (a JSON list of strings) prints
            // [{"ids": [...], "decoded": "..."}] (encode without BOS; decode of those ids).
            val tok = SentencePieceTokenizer.load(tokenizerFile)
            tok.requireSupported(tokenizerFile.path)
            val texts = Json.parse((encodeJson ?: fail("--tokenizer needs --encode-json FILE")).readText(), encodeJson.path) as? List<*>
                ?: fail("$encodeJson: expected a JSON list of strings")
            out.println(Json.write(texts.map { t ->
                val ids = tok.encode(t as? String ?: fail("$encodeJson: expected strings"), addBos = false)
                mapOf("ids" to ids, "decoded" to tok.decode(ids))
            }))
            return 0
        }
        val dir = File(bundleDir ?: fail("no bundle folder given; $USAGE"))
        val sampling = SamplingConfig(temperature, topK, topP, seed)
        val bundle = Bundle.open(dir)
        OnnxBackend(bundle, threads, spin).use { backend ->
            if (selftest) {
                val st = bundle.selftest ?: fail("$dir: the bundle has no selftest file (an artifact, not a bundle?); run `rgmobile package`")
                val runner = SelfTestRunner(backend, bundle.tokenizer, bundle.manifest.eosId)
                runner.onProgress = { err.println(it) }
                val t0 = System.nanoTime()
                val r = runner.run(st)
                out.println(r.summary())
                out.println(Json.write(linkedMapOf(
                    "passed" to r.passed, "worst_error" to r.worstError, "worst_error_where" to r.worstErrorWhere,
                    "agreement" to r.agreement, "worst_match" to r.worstMatch, "matches" to r.matches,
                    "tokenizer_mismatches" to r.tokenizerMismatches, "tokenizer_total" to r.tokenizerTotal,
                    "failures" to r.failures, "seconds" to (System.nanoTime() - t0) / 1e9,
                )))
                return if (r.passed) 0 else 1
            }
            val gen = Generator(bundle, backend)
            if (warmup > 0) gen.generate("The", warmup)
            val saved = resume?.let { StateFile.load(it, bundle.manifest.identity, bundle.manifest.io) }
            val text = prompt ?: if (saved != null) "" else "The"
            if (!ids) out.print(text)
            val r = gen.generate(text, maxNew, sampling, onText = if (ids) null else { s -> out.print(s) }, resume = saved, saveState = saveState)
            if (ids) out.println(Json.write(r.newIds)) else out.println()
            err.println(
                "onnxruntime: ${r.promptIds.size} prompt tokens${if (saved != null) " (resumed ${r.resumedTokens})" else ""} in " +
                    "${"%.3f".format(r.prefillSeconds)}s, ${r.newIds.size} new tokens at ${"%.1f".format(r.decodeTokensPerSecond)} tok/s" +
                    (if (r.stoppedOnEos) ", stopped on EOS" else "") +
                    (if (saveState != null) "; state saved to $saveState (${r.stateBytes} bytes)" else ""),
            )
        }
        return 0
    }
}
