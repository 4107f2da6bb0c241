import Foundation
import XCTest
@testable import RGMobileKit

/// Bundles made by `rgmobile package --target ios` from the bundled model's ONNX exports:
/// RGMOBILE_BUNDLE_FP32 and _INT4 (the default export: one `step.onnx`), and _PER_LENGTH (fp32 with
/// `--graph-per-length`: `decode.onnx` and `prefill.onnx`).
/// Tests that need one FAIL when its variable is missing, unless RGMOBILE_UNIT_ONLY=1 (then they skip).
enum Fixtures {
    static let env = ProcessInfo.processInfo.environment

    static func bundle(_ precision: String) throws -> URL {
        let key = "RGMOBILE_BUNDLE_\(precision.uppercased())"
        guard let path = env[key], !path.isEmpty else {
            if env["RGMOBILE_UNIT_ONLY"] == "1" { throw XCTSkip("\(key) not set and RGMOBILE_UNIT_ONLY=1") }
            XCTFail("\(key) is not set: point it at an ios ONNX bundle (or set RGMOBILE_UNIT_ONLY=1 for unit tests only)")
            throw RGError("\(key) missing")
        }
        return URL(fileURLWithPath: path)
    }

    /// The onnxruntime library for bundle tests: RGMOBILE_ORT_LIB, else the newer one setup_swift.sh installs.
    static var ortLibrary: String? { env["RGMOBILE_ORT_LIB"] ?? env["RGMOBILE_ORT_NODE_LIB"] }

    static var engines = [String: Engine]()

    static func engine(_ precision: String) throws -> Engine {
        if let e = engines[precision] { return e }
        let e = try Engine.open(try bundle(precision), ortLibrary: ortLibrary)
        engines[precision] = e
        return e
    }

    static func tempDir() throws -> URL {
        let u = FileManager.default.temporaryDirectory.appendingPathComponent("rgmobile-tests-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: u, withIntermediateDirectories: true)
        return u
    }
}
