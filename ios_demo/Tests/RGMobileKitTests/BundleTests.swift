import XCTest
@testable import RGMobileKit

final class BundleTests: XCTestCase {
    /// A copy of the fp32 bundle to break.
    func copyBundle() throws -> URL {
        let src = try Fixtures.bundle("fp32")
        let dst = try Fixtures.tempDir().appendingPathComponent("bundle")
        try FileManager.default.copyItem(at: src, to: dst)
        return dst
    }

    func manifestJSON(_ dir: URL) throws -> [String: Any] {
        try JSONSerialization.jsonObject(with: Data(contentsOf: dir.appendingPathComponent("manifest.json"))) as! [String: Any]
    }

    func writeManifest(_ dir: URL, _ m: [String: Any]) throws {
        try JSONSerialization.data(withJSONObject: m).write(to: dir.appendingPathComponent("manifest.json"))
    }

    func assertRefused(_ dir: URL, _ fragment: String, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertThrowsError(try RGBundle(directory: dir), file: file, line: line) { e in
            let msg = (e as? RGError)?.message ?? "\(e)"
            XCTAssertTrue(msg.contains(fragment), "\(msg) lacks \(fragment)", file: file, line: line)
            XCTAssertFalse(msg.contains("\n"), "one line", file: file, line: line)
        }
    }

    func testOpensAndVerifies() throws {
        let b = try RGBundle(directory: try Fixtures.bundle("fp32"))
        XCTAssertEqual(b.manifest.format, "onnx")
        XCTAssertEqual(b.manifest.seqLens.last, 1)
        XCTAssertEqual(b.manifest.io.stateInputs.count, 2 * b.manifest.config.num_layers)
        XCTAssertEqual(b.manifest.bundle?["target"]?.stringValue, "ios")
        XCTAssertNotNil(b.manifest.identity)
    }

    func testRefusesNewerSchema() throws {
        let dir = try copyBundle()
        var m = try manifestJSON(dir)
        m["schema_version"] = 2
        try writeManifest(dir, m)
        assertRefused(dir, "newer than this app reads")
    }

    func testRefusesMissingField() throws {
        let dir = try copyBundle()
        var m = try manifestJSON(dir)
        m.removeValue(forKey: "programs")
        try writeManifest(dir, m)
        assertRefused(dir, "programs")
    }

    func testRefusesChangedFile() throws {
        let dir = try copyBundle()
        let url = dir.appendingPathComponent("tokenizer.model")
        var data = try Data(contentsOf: url)
        data[100] ^= 0xFF  // same size, other content
        try data.write(to: url)
        assertRefused(dir, "sha256")
        try data.dropLast().write(to: url)
        assertRefused(dir, "bytes")
    }

    func testRefusesSymlink() throws {
        let dir = try copyBundle()
        let url = dir.appendingPathComponent("tokenizer.model")
        let outside = dir.deletingLastPathComponent().appendingPathComponent("tokenizer.model")
        try FileManager.default.moveItem(at: url, to: outside)
        try FileManager.default.createSymbolicLink(at: url, withDestinationURL: outside)
        assertRefused(dir, "symlink")
    }

    func testRefusesMissingManifest() throws {
        assertRefused(try Fixtures.tempDir(), "no manifest.json")
    }

    /// Manifest `m` with the logits output's middle dim set to `dim`, as JSON.
    func withLogitsDim(_ m: [String: Any], _ dim: Any) throws -> Data {
        var m = m
        var io = m["io"] as! [String: Any]
        var outputs = io["outputs"] as! [[String: Any]]
        var shape = outputs[0]["shape"] as! [Any]
        shape[1] = dim
        outputs[0]["shape"] = shape
        io["outputs"] = outputs
        m["io"] = io
        return try JSONSerialization.data(withJSONObject: m)
    }

    private func withMinSeqLen(_ m: [String: Any], _ low: Any?) throws -> Data {
        var m = m
        var programs = m["programs"] as! [String: [String: Any]]
        programs["prefill"]!["min_seq_len"] = low
        m["programs"] = programs
        return try JSONSerialization.data(withJSONObject: m)
    }

    func testAPrefillProgramThatRunsARangeOfLengths() throws {
        let m = try manifestJSON(try Fixtures.bundle("fp32"))
        let ranged = try Manifest.parse(withMinSeqLen(m, 2), where: "m")
        let chunk = ranged.prefill_chunk
        XCTAssertEqual(ranged.seqLens, Array((1...chunk).reversed()))
        XCTAssertEqual(planChunks(chunk + 3, seqLens: ranged.seqLens), [chunk, 3])  // the remainder is one call
        XCTAssertEqual(planChunks(chunk + 3, seqLens: try Manifest.parse(withMinSeqLen(m, nil), where: "m").seqLens),
                       [chunk, 1, 1, 1])
        XCTAssertEqual(describeLengths(ranged.seqLens), "\(chunk)..1")
        XCTAssertEqual(describeLengths([1, 3, 7, 8, 9]), "9..7, 3, 1")
        for bad: Any in [0, chunk + 1, "2"] {
            XCTAssertThrowsError(try Manifest.parse(withMinSeqLen(m, bad), where: "m"), "min_seq_len \(bad)")
        }
        XCTAssertThrowsError(try Manifest.parse(withMinSeqLen(m, 0), where: "m")) {
            let msg = ($0 as? RGError)?.message ?? "\($0)"
            XCTAssertTrue(msg.contains("'min_seq_len' must be an integer from 1 to its seq_len"), msg)
        }
        XCTAssertThrowsError(try Manifest.parse(withMinSeqLen(m, 1), where: "m")) {
            let msg = ($0 as? RGError)?.message ?? "\($0)"
            XCTAssertTrue(msg.contains("programs 'decode' and 'prefill' both run 1 tokens per step"), msg)
        }
    }

    func testLogitsOfEveryPositionOrTheLastOnly() throws {
        let m = try manifestJSON(try Fixtures.bundle("fp32"))
        XCTAssertEqual(try Manifest.parse(withLogitsDim(m, "seq"), where: "m").io.outputs[0].shape[1], .symbol("seq"))
        XCTAssertEqual(try Manifest.parse(withLogitsDim(m, 1), where: "m").io.outputs[0].shape[1], .fixed(1))
        for bad: Any in [2, "1", "batch"] {
            XCTAssertThrowsError(try Manifest.parse(withLogitsDim(m, bad), where: "m")) {
                let msg = ($0 as? RGError)?.message ?? "\($0)"
                XCTAssertTrue(msg.contains("logits shape must be [batch, seq or 1, vocab], got [batch, \(bad), "), msg)
            }
        }
    }

    func testRefusesEscapingPath() throws {
        let dir = try copyBundle()
        var m = try manifestJSON(dir)
        var files = m["files"] as! [[String: Any]]
        files[0]["path"] = "../outside"
        m["files"] = files
        try writeManifest(dir, m)
        assertRefused(dir, "must be relative")
    }
}
