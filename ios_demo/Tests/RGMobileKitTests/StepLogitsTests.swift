import XCTest
@testable import RGMobileKit

/// A step returns every position's logits [t, v] or, exported with last-position logits, the last
/// one's [1, v]; the engine reads the last row of either. Bundle-free.
final class StepLogitsTests: XCTestCase {
    let v = 5

    func testLastRowOfEitherFormIsTheSame() throws {
        let full: [Float] = (0..<3 * v).map { Float(($0 * 7) % 11) }  // [3, v]
        let last = Array(full[(2 * v)...])  // [1, v]
        XCTAssertEqual(try logitsRows(full.count, tokens: 3, vocab: v), 3)
        XCTAssertEqual(try logitsRows(last.count, tokens: 3, vocab: v), 1)
        let a = try lastLogits(full, tokens: 3, vocab: v), b = try lastLogits(last, tokens: 3, vocab: v)
        XCTAssertEqual(a, last)
        XCTAssertEqual(a, b)
        let cfg = try SamplingConfig(temperature: 1, seed: 5)
        var s1 = Sampler(cfg), s2 = Sampler(cfg)
        XCTAssertEqual(a.withUnsafeBufferPointer { s1.sample($0) }, b.withUnsafeBufferPointer { s2.sample($0) })
    }

    func testOtherRowCountsAreOneClearError() {
        XCTAssertThrowsError(try lastLogits([Float](repeating: 0, count: 2 * v), tokens: 4, vocab: v)) {
            let msg = ($0 as? RGError)?.message ?? "\($0)"
            XCTAssertTrue(msg.contains("a step of 4 tokens returned 10 logits, not [4, 5] (every position's) or [1, 5]"), msg)
        }
        XCTAssertThrowsError(try lastLogits([Float](repeating: 0, count: 7), tokens: 1, vocab: v)) {
            XCTAssertTrue((($0 as? RGError)?.message ?? "").contains("returned 7 logits"), "\($0)")
        }
    }
}
