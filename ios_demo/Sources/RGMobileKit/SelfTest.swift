import Foundation

/// The result of running a bundle's selftest.json (docs/bundle.md "How a runtime runs the self-test").
public struct SelfTestReport {
    public var worstError = 0.0  // max of top-value errors and mean sum errors over all checks
    public var agreement = 1.0  // teacher-forced argmax == reference, over all steps of all cases
    public var worstMatch = 1.0  // free-running greedy: common prefix / reference length, worst case
    public var artifactExact = true  // free-running greedy == artifact_greedy_ids (where given)
    public var tokenizerFailures: [String] = []
    public var tokenizerCount = 0
    public var tolerances: SelftestFile.Tolerances
    public var seconds = 0.0

    public var passed: Bool {
        worstError <= tolerances.max_abs_logits && agreement >= tolerances.top1_agreement
            && worstMatch >= tolerances.greedy_match && tokenizerFailures.isEmpty
    }

    public var summary: String {
        let tok = tokenizerFailures.isEmpty ? "all \(tokenizerCount) match"
            : "\(tokenizerFailures.count) of \(tokenizerCount) differ (first: \(tokenizerFailures[0].debugDescription))"
        return "self-test \(passed ? "PASS" : "FAIL"): worst error \(fmt(worstError)) (max \(fmt(tolerances.max_abs_logits))), "
            + "argmax agreement \(fmt(agreement)) (min \(fmt(tolerances.top1_agreement))), greedy match \(fmt(worstMatch)) "
            + "(min \(fmt(tolerances.greedy_match))), tokenizer \(tok), artifact ids \(artifactExact ? "equal" : "differ"), \(String(format: "%.1f", seconds)) s"
    }

    private func fmt(_ x: Double) -> String { String(format: "%.3g", x) }
}

extension Engine {
    /// Run the bundle's self-test: teacher-forced checks, free-running greedy, tokenizer strings.
    public func selfTest(file: SelftestFile? = nil, progress: ((String) -> Void)? = nil) throws -> SelfTestReport {
        let name = (bundle.manifest.bundle?["selftest_file"]?.stringValue) ?? "selftest.json"
        let st = try file ?? SelftestFile.read(bundle.url(name))
        if st.vocab_size != bundle.manifest.vocabSize {
            throw RGError("selftest.json is for vocab \(st.vocab_size), the model has \(bundle.manifest.vocabSize); re-package the bundle")
        }
        let t0 = Date()
        var report = SelfTestReport(tolerances: st.tolerances)
        let v = bundle.manifest.vocabSize
        var agree = 0, steps = 0
        for c in st.cases {
            progress?("case \(c.name): teacher-forced")
            // 1. Teacher-forced: the prompt, then the reference tokens one at a time.
            let checks = Dictionary(c.checks.map { ($0.step, $0) }, uniquingKeysWith: { a, _ in a })
            var (logits, state) = try run(c.prompt_ids, state: try backend.initState(), start: 0)  // [v]
            for (k, ref) in c.reference_greedy_ids.enumerated() {
                steps += 1
                if logits.withUnsafeBufferPointer({ Sampler.argmax($0) }) == ref { agree += 1 }
                if let ch = checks[k] {
                    for (id, value) in zip(ch.top_ids, ch.top_values) {
                        report.worstError = max(report.worstError, abs(Double(logits[id]) - value))
                    }
                    let sum = logits.reduce(0.0) { $0 + Double($1) }, sumAbs = logits.reduce(0.0) { $0 + abs(Double($1)) }
                    report.worstError = max(report.worstError, abs(sum - ch.sum) / Double(v), abs(sumAbs - ch.sum_abs) / Double(v))
                }
                if k + 1 < c.reference_greedy_ids.count {
                    let pos = Int64(c.prompt_ids.count + k)
                    (logits, state) = try backend.step(ids: [Int64(ref)], positions: [pos], state: state)
                    logits = try lastLogits(logits, tokens: 1, vocab: v)
                }
            }
            // 2. Free-running greedy.
            progress?("case \(c.name): greedy")
            let got = try generate(promptIds: c.prompt_ids, maxNewTokens: c.max_new_tokens).newIds
            let ref = c.reference_greedy_ids
            let common = zip(got, ref).prefix(while: { $0 == $1 }).count
            report.worstMatch = min(report.worstMatch, ref.isEmpty ? (got.isEmpty ? 1 : 0) : Double(common) / Double(ref.count))
            if let art = c.artifact_greedy_ids, art != got { report.artifactExact = false }
        }
        report.agreement = steps > 0 ? Double(agree) / Double(steps) : 1
        // 3. Tokenizer strings.
        progress?("tokenizer")
        report.tokenizerCount = st.tokenizer.count
        for t in st.tokenizer where tokenizer.encode(t.text) != t.ids || !tokenizer.decode(t.ids).utf8.elementsEqual(t.decoded.utf8) {
            report.tokenizerFailures.append(t.text)
        }
        report.seconds = Date().timeIntervalSince(t0)
        return report
    }
}
