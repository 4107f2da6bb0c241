import XCTest
@testable import RGMobileKit

final class StateFileTests: XCTestCase {
    let identity = Identity(config_sha256: "c", weights_sha256: "w", precision: "fp32")

    func io(_ dtype: String = "float32") throws -> IOSpec {
        let json = """
        {"inputs": [{"name": "input_ids", "dtype": "int64", "shape": ["batch", "seq"], "role": "tokens"},
                    {"name": "position_ids", "dtype": "int64", "shape": ["batch", "seq"], "role": "positions"},
                    {"name": "past_key_values.0.key", "dtype": "\(dtype)", "shape": ["batch", 2, 3], "role": "state",
                     "pair": "present.0.key", "init": "zeros"}],
         "outputs": [{"name": "logits", "dtype": "float32", "shape": ["batch", "seq", 8], "role": "logits"},
                     {"name": "present.0.key", "dtype": "\(dtype)", "shape": ["batch", 2, 3], "role": "state",
                      "pair": "past_key_values.0.key"}]}
        """
        return try JSONDecoder().decode(IOSpec.self, from: Data(json.utf8))
    }

    func floats(_ v: [Float]) -> TensorData {
        TensorData(dtype: "float32", shape: [1, 2, 3], bytes: v.flatMap { littleEndian($0.bitPattern) })
    }

    func testRoundTripAndChecks() throws {
        let dir = try Fixtures.tempDir()
        let url = dir.appendingPathComponent("s.rgstate")
        let t = floats([0, 1, -2, 0.5, 3.25, -0.125])
        let saved = SavedState(tokenIds: [2, 10, 11], tensors: ["past_key_values.0.key": t], identity: identity)
        try saved.write(to: url, io: try io())
        let back = try SavedState.read(url, identity: identity, io: try io())
        XCTAssertEqual(back.tokenIds, [2, 10, 11])
        XCTAssertEqual(back.position, 2)
        XCTAssertEqual(back.tensors["past_key_values.0.key"], t)
        // fp16 opener: converted (these values are exact in half precision).
        let half = try SavedState.read(url, identity: identity, io: try io("float16"))
        XCTAssertEqual(half.tensors["past_key_values.0.key"]?.converted(to: "float32"), t)
        // another model or precision is refused in one line
        for other in [Identity(config_sha256: "x", weights_sha256: "w", precision: "fp32"),
                      Identity(config_sha256: "c", weights_sha256: "x", precision: "fp32"),
                      Identity(config_sha256: "c", weights_sha256: "w", precision: "int4")] {
            XCTAssertThrowsError(try SavedState.read(url, identity: other, io: try io())) {
                XCTAssertTrue(($0 as! RGError).message.contains("does not belong"))
            }
        }
        // truncated
        let raw = try Data(contentsOf: url)
        try raw.dropLast(4).write(to: url)
        XCTAssertThrowsError(try SavedState.read(url, identity: identity, io: try io()))
        try Data("not a state".utf8).write(to: url)
        XCTAssertThrowsError(try SavedState.read(url, identity: identity, io: try io()))
    }

    func testRefusesNewerSchema() throws {
        let url = try Fixtures.tempDir().appendingPathComponent("s.rgstate")
        try SavedState(tokenIds: [2], tensors: ["past_key_values.0.key": floats([0, 0, 0, 0, 0, 0])], identity: identity)
            .write(to: url, io: try io())
        var raw = [UInt8](try Data(contentsOf: url))
        let header = String(decoding: raw[8..<(8 + Int(raw[0]) + Int(raw[1]) << 8)], as: UTF8.self)
        let patched = header.replacingOccurrences(of: "\"rgmobile.schema_version\":\"1\"", with: "\"rgmobile.schema_version\":\"9\"")
        XCTAssertNotEqual(header, patched)
        raw.replaceSubrange(8..<(8 + header.utf8.count), with: Array(patched.utf8))
        try Data(raw).write(to: url)
        XCTAssertThrowsError(try SavedState.read(url, identity: identity, io: try io())) {
            XCTAssertTrue(($0 as! RGError).message.contains("newer than this app reads"))
        }
    }

    func testHalfConversion() {
        // IEEE 754 binary16 encodings.
        for (f, h) in [(Float(1), UInt16(0x3C00)), (-2, 0xC000), (65504, 0x7BFF), (0.5, 0x3800), (Float(pow(2.0, -24.0)), 0x0001), (0, 0)] {
            XCTAssertEqual(Half.fromFloat(f), h, "\(f)")
            XCTAssertEqual(Half.toFloat(h), f, "\(h)")
        }
        XCTAssertEqual(Half.fromFloat(1e6), 0x7C00)  // overflow -> infinity
    }
}
