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

    func testGreedyEqualsPythonRuntime() throws {
        for p in ["fp32", "int4"] {
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
