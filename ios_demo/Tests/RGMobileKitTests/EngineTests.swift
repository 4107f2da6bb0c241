import XCTest
@testable import RGMobileKit

/// The engine on real bundles: the bundle's self-test, greedy ids equal to what rgmobile's Python
/// runtime produced on the same artifact (selftest.json artifact_greedy_ids), exact resume.
final class EngineTests: XCTestCase {
    func checkSelfTest(_ precision: String) throws {
        let e = try Fixtures.engine(precision)
        let report = try e.selfTest()
        XCTAssertTrue(report.passed, report.summary)
        XCTAssertTrue(report.artifactExact, report.summary)
        print("[\(precision)] \(report.summary)")
    }

    func testSelfTestFP32() throws { try checkSelfTest("fp32") }
    func testSelfTestINT4() throws { try checkSelfTest("int4") }
    func testSelfTestGraphPerLength() throws { try checkSelfTest("per_length") }

    func testGreedyEqualsPythonRuntime() throws {
        for p in ["fp32", "int4", "per_length"] {
            let e = try Fixtures.engine(p)
            let st = try SelftestFile.read(e.bundle.url("selftest.json"))
            for c in st.cases {
                guard let want = c.artifact_greedy_ids else { XCTFail("no artifact ids in \(p) \(c.name)"); continue }
                let got = try e.generate(prompt: c.prompt, maxNewTokens: c.max_new_tokens)
                XCTAssertEqual(got.promptIds, c.prompt_ids)
                XCTAssertEqual(got.newIds, want, "\(p) \(c.name)")
                XCTAssertGreaterThanOrEqual(got.newIds.count, 128)
            }
        }
    }

    /// The default export: decode and prefill name one `step.onnx` (token dim symbolic), opened
    /// once; the same weights as the `--graph-per-length` bundle's two graphs, so the same greedy ids.
    func testOneProgramBundleRunsBothLengthsOnOneSession() throws {
        let one = try Fixtures.engine("fp32"), two = try Fixtures.engine("per_length")
        let m = one.bundle.manifest
        XCTAssertEqual(Set(m.programs.values.map(\.file)).count, 1, "\(m.programs)")
        XCTAssertEqual(try XCTUnwrap(one.backend as? OnnxBackend).sessionCount, 1)
        XCTAssertEqual(try XCTUnwrap(two.backend as? OnnxBackend).sessionCount, 2)
        XCTAssertEqual(one.backend.seqLens, Array((1...m.prefill_chunk).reversed()))  // prefill runs 2..chunk
        let st = try SelftestFile.read(one.bundle.url("selftest.json"))
        XCTAssertTrue(st.cases.contains { planChunks($0.prompt_ids.count, seqLens: one.backend.seqLens).contains { $0 > 1 } },
                      "no case runs a prefill chunk")
        for c in st.cases {
            let want = try two.generate(prompt: c.prompt, maxNewTokens: c.max_new_tokens).newIds
            XCTAssertEqual(try one.generate(prompt: c.prompt, maxNewTokens: c.max_new_tokens).newIds, want, c.name)
        }
    }

    /// Every step returns its last position's logits `copies(t)` times (of either form the wrapped
    /// backend returns): once is what programs exported with last-position logits return.
    final class LastRow: Backend {
        let inner: Backend
        let copies: (Int) -> Int
        init(_ inner: Backend, copies: @escaping (Int) -> Int) { self.inner = inner; self.copies = copies }
        var name: String { inner.name }
        var manifest: Manifest { inner.manifest }
        var seqLens: [Int] { inner.seqLens }
        func initState() throws -> ModelState { try inner.initState() }
        func step(ids: [Int64], positions: [Int64], state: ModelState) throws -> ([Float], ModelState) {
            let (logits, next) = try inner.step(ids: ids, positions: positions, state: state)  // [t * v] or [v]
            let last = logits.suffix(manifest.vocabSize)
            return (Array(repeatElement(last, count: copies(ids.count)).joined()), next)
        }
        func stateTensors(_ state: ModelState) throws -> [String: TensorData] { try inner.stateTensors(state) }
        func state(from tensors: [String: TensorData]) throws -> ModelState { try inner.state(from: tensors) }
    }

    func testLastPositionLogitsGiveTheSameTokensAndSelfTest() throws {
        let e = try Fixtures.engine("fp32")
        let cut = try Engine(bundle: e.bundle, backend: LastRow(e.backend) { _ in 1 })
        let st = try SelftestFile.read(e.bundle.url("selftest.json"))
        XCTAssertTrue(st.cases.contains { planChunks($0.prompt_ids.count, seqLens: e.backend.seqLens).contains { $0 > 1 } },
                      "no case runs a prefill chunk")
        let sampled = try SamplingConfig(temperature: 0.9, topK: 40, seed: 42)
        for c in st.cases {
            for cfg in [SamplingConfig.greedy, sampled] {
                let want = try e.generate(prompt: c.prompt, maxNewTokens: 24, sampling: cfg).newIds
                XCTAssertEqual(try cut.generate(prompt: c.prompt, maxNewTokens: 24, sampling: cfg).newIds, want, c.name)
            }
        }
        let full = try e.selfTest(), last = try cut.selfTest()
        XCTAssertTrue(last.passed && last.artifactExact, last.summary)
        XCTAssertEqual(last.worstError, full.worstError)
        XCTAssertEqual(last.agreement, full.agreement)
        XCTAssertEqual(last.worstMatch, full.worstMatch)
        // two rows from a prefill chunk: neither form, one clear error
        let bad = try Engine(bundle: e.bundle, backend: LastRow(e.backend) { min($0, 2) })
        let v = e.bundle.manifest.vocabSize, t = e.backend.seqLens[0]
        let long = try XCTUnwrap(st.cases.first { $0.prompt_ids.count >= t })
        XCTAssertThrowsError(try bad.generate(prompt: long.prompt, maxNewTokens: 1)) {
            let msg = ($0 as? RGError)?.message ?? "\($0)"
            XCTAssertTrue(msg.contains("a step of \(t) tokens returned \(2 * v) logits, not [\(t), \(v)]"), msg)
        }
    }

    /// Greedy N tokens saved after k and resumed for N - k gives the uninterrupted run's tokens.
    func testResumeIsExact() throws {
        let e = try Fixtures.engine("fp32")
        let dir = try Fixtures.tempDir()
        let prompt = "The river ran past the old stone house and"
        let full = try e.generate(prompt: prompt, maxNewTokens: 90)
        XCTAssertEqual(full.newIds.count, 90)
        let url = dir.appendingPathComponent("a.rgstate")
        var streamed = ""
        let first = try e.generate(prompt: prompt, maxNewTokens: 37, saveState: url, onText: { streamed += $0 })
        XCTAssertEqual(streamed, first.text)
        XCTAssertGreaterThan(first.stateBytes, 0)
        let second = try e.generate(prompt: "", maxNewTokens: 53, resume: url)
        XCTAssertEqual(first.newIds + second.newIds, full.newIds)
        XCTAssertEqual(second.resumedTokens, full.promptIds.count + 37)
        // max-new-tokens 0 with a save: the prompt's state, resumable to the same run
        let zero = dir.appendingPathComponent("z.rgstate")
        _ = try e.generate(prompt: prompt, maxNewTokens: 0, saveState: zero)
        XCTAssertEqual(try e.generate(prompt: "", maxNewTokens: 90, resume: zero).newIds, full.newIds)
        // another precision refuses this state
        let int4 = try Fixtures.engine("int4")
        XCTAssertThrowsError(try int4.generate(prompt: "", maxNewTokens: 1, resume: url)) {
            XCTAssertTrue(($0 as! RGError).message.contains("precision"))
        }
    }
}
