package dev.rgmobile.engine

/** What a self-test run found; [passed] is the verdict, the rest says why. */
data class SelftestResult(
    val passed: Boolean,
    val worstError: Double,
    val worstErrorWhere: String,
    val agreement: Double,
    val worstMatch: Double,
    val worstMatchCase: String,
    val tokenizerMismatches: Int,
    val tokenizerTotal: Int,
    val matches: Map<String, Double>,
    val failures: List<String>,
) {
    fun summary(): String =
        "self-test ${if (passed) "passed" else "FAILED"}: worst error ${"%.3g".format(worstError)} ($worstErrorWhere), " +
            "agreement ${"%.4f".format(agreement)}, worst greedy match ${"%.3f".format(worstMatch)} ($worstMatchCase), " +
            "tokenizer ${tokenizerTotal - tokenizerMismatches}/$tokenizerTotal"
}

/**
 * Runs a bundle's selftest.json exactly as docs/bundle.md describes (rgmobile/package/selftest_check.py
 * is the reference): teacher-forced checks, free-running greedy match, tokenizer vectors.
 */
class SelfTestRunner(private val backend: Backend, private val tokenizer: SentencePieceTokenizer, private val eosId: Int) {
    var onProgress: ((String) -> Unit)? = null

    private fun step(token: Int, position: Int, state: State): Pair<FloatArray, State> {
        val out = backend.step(longArrayOf(token.toLong()), longArrayOf(position.toLong()), state)
        state.close()
        return out.lastRow() to out.state
    }

    /** Max of: abs error at the top ids, |sum| error / vocab, |sum_abs| error / vocab. */
    fun checkError(logits: FloatArray, c: Selftest.Check, vocab: Int): Double {
        var worst = 0.0
        for (j in c.topIds.indices) worst = maxOf(worst, Math.abs(logits[c.topIds[j]].toDouble() - c.topValues[j]))
        var sum = 0.0; var sumAbs = 0.0
        for (v in logits) { sum += v; sumAbs += Math.abs(v.toDouble()) }
        worst = maxOf(worst, Math.abs(sum - c.sum) / vocab, Math.abs(sumAbs - c.sumAbs) / vocab)
        return if (worst.isNaN()) Double.POSITIVE_INFINITY else worst
    }

    /** (agreeing steps, steps, worst error, where) of one case. */
    fun teacherForced(case: Selftest.Case, vocab: Int): TF {
        val ref = case.referenceGreedyIds
        val checks = case.checks.associateBy { it.step }
        val init = backend.initState()
        var (last, state) = runTokens(backend, case.promptIds, init, 0)
        if (state !== init) init.close()
        var agree = 0; var worst = 0.0; var where = "no checks"
        try {
            val steps = maxOf(ref.size, if (checks.containsKey(0)) 1 else 0)
            for (k in 0 until steps) {
                checks[k]?.let {
                    val err = checkError(last, it, vocab)
                    if (err >= worst) { worst = err; where = "case ${case.name}, step $k" }
                }
                if (k < ref.size) {
                    if (Sampler.argmax(last) == ref[k]) agree++
                    if (k + 1 < ref.size || checks.containsKey(k + 1)) {
                        val r = step(ref[k], case.promptIds.size + k, state)
                        last = r.first; state = r.second
                    }
                }
            }
        } finally {
            state.close()
        }
        return TF(agree, ref.size, worst, where)
    }

    data class TF(val agree: Int, val steps: Int, val worst: Double, val where: String)

    /** Greedy ids of [promptIds] (at most [maxNewTokens], stopping before EOS). */
    fun greedy(promptIds: IntArray, maxNewTokens: Int): IntArray {
        val init = backend.initState()
        var (last, state) = runTokens(backend, promptIds, init, 0)
        if (state !== init) init.close()
        val out = ArrayList<Int>()
        try {
            for (i in 0 until maxNewTokens) {
                val token = Sampler.argmax(last)
                if (token == eosId) break
                out.add(token)
                if (i + 1 < maxNewTokens) {
                    val r = step(token, promptIds.size + i, state)
                    last = r.first; state = r.second
                }
            }
        } finally {
            state.close()
        }
        return out.toIntArray()
    }

    fun freeRunning(case: Selftest.Case): Double {
        val out = greedy(case.promptIds, case.maxNewTokens)
        val ref = case.referenceGreedyIds
        if (ref.isEmpty()) return if (out.isEmpty()) 1.0 else 0.0
        var common = 0
        while (common < minOf(out.size, ref.size) && out[common] == ref[common]) common++
        return common.toDouble() / ref.size
    }

    fun run(st: Selftest): SelftestResult {
        var agree = 0; var steps = 0; var worst = 0.0; var where = "no checks"
        val matches = LinkedHashMap<String, Double>()
        for (case in st.cases) {
            onProgress?.invoke("case ${case.name}: teacher-forced")
            val tf = teacherForced(case, st.vocabSize)
            agree += tf.agree; steps += tf.steps
            if (tf.worst >= worst) { worst = tf.worst; where = tf.where }
            onProgress?.invoke("case ${case.name}: free-running greedy")
            matches[case.name] = freeRunning(case)
        }
        onProgress?.invoke("tokenizer: ${st.tokenizer.size} strings")
        var mismatches = 0
        for (v in st.tokenizer) {
            val ids = tokenizer.encode(v.text, addBos = false)
            if (!ids.contentEquals(v.ids) || tokenizer.decode(v.ids) != v.decoded) mismatches++
        }
        val agreement = if (steps > 0) agree.toDouble() / steps else 1.0
        val worstCase = matches.minByOrNull { it.value }!!.key
        val failures = ArrayList<String>()
        if (!(worst <= st.maxAbsLogits)) failures.add("worst error ${"%.3g".format(worst)} > ${"%.3g".format(st.maxAbsLogits)} ($where)")
        if (agreement < st.top1Agreement) failures.add("agreement ${"%.4f".format(agreement)} < ${"%.4f".format(st.top1Agreement)}")
        if (matches.getValue(worstCase) < st.greedyMatch) failures.add("greedy match ${"%.3f".format(matches.getValue(worstCase))} < ${"%.3f".format(st.greedyMatch)} ($worstCase)")
        if (mismatches > 0) failures.add("tokenizer: $mismatches of ${st.tokenizer.size} strings differ")
        return SelftestResult(
            failures.isEmpty(), worst, where, agreement, matches.getValue(worstCase), worstCase, mismatches,
            st.tokenizer.size, matches, failures,
        )
    }
}
