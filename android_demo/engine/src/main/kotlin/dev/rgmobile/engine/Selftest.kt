package dev.rgmobile.engine

import java.io.File
import java.io.IOException

/** selftest.json (schema 1, docs/bundle.md): the golden cases a bundle carries. */
data class Selftest(
    val artifactFormat: String,
    val precision: String,
    val window: Int,
    val vocabSize: Int,
    val maxAbsLogits: Double,
    val top1Agreement: Double,
    val greedyMatch: Double,
    val cases: List<Case>,
    val tokenizer: List<TokenizerVector>,
) {
    data class Check(val step: Int, val position: Int, val topIds: IntArray, val topValues: DoubleArray, val sum: Double, val sumAbs: Double)

    data class Case(
        val name: String,
        val prompt: String,
        val promptIds: IntArray,
        val maxNewTokens: Int,
        val referenceGreedyIds: IntArray,
        val artifactGreedyIds: IntArray?,
        val checks: List<Check>,
    )

    data class TokenizerVector(val text: String, val ids: IntArray, val decoded: String)

    companion object {
        const val SCHEMA_VERSION = 1
        const val FORMAT = "rgmobile-selftest"

        fun read(file: File): Selftest {
            if (!file.isFile) fail("$file: missing; the bundle's selftest file is listed but not there; re-copy the bundle")
            val text = try { file.readText(Charsets.UTF_8) } catch (e: IOException) { fail("$file: cannot read (${e.message})") }
            return parse(text, file.path)
        }

        fun parse(text: String, where: String): Selftest {
            val r = JObj(JObj.asMap(Json.parse(text, where), "$where: expected a JSON object"), where)
            val version = r.map["schema_version"] as? Long ?: fail("$where: missing or non-integer schema_version")
            if (version > SCHEMA_VERSION) fail("$where: schema_version $version is newer than this app reads ($SCHEMA_VERSION); upgrade the app")
            if (r.strOrNull("format") != FORMAT) fail("$where: not an rgmobile self-test (format ${r.map["format"]})")
            val tol = r.obj("tolerances")
            val cases = r.objs("cases").map { c ->
                Case(
                    name = c.str("name"),
                    prompt = c.str("prompt"),
                    promptIds = c.ints("prompt_ids"),
                    maxNewTokens = c.int("max_new_tokens"),
                    referenceGreedyIds = c.ints("reference_greedy_ids"),
                    artifactGreedyIds = if (c.has("artifact_greedy_ids")) c.ints("artifact_greedy_ids") else null,
                    checks = c.objs("checks").map { k ->
                        Check(k.int("step"), k.int("position"), k.ints("top_ids"), k.doubles("top_values"), k.double("sum"), k.double("sum_abs"))
                    },
                )
            }
            if (cases.isEmpty()) fail("$where: no cases")
            val vectors = r.objs("tokenizer").map { TokenizerVector(it.str("text"), it.ints("ids"), it.str("decoded")) }
            return Selftest(
                r.str("artifact_format"), r.str("precision"), r.int("window"), r.int("vocab_size"),
                tol.double("max_abs_logits"), tol.double("top1_agreement"), tol.double("greedy_match"), cases, vectors,
            )
        }
    }
}
