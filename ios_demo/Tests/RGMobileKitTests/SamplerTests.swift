import XCTest
@testable import RGMobileKit

final class SamplerTests: XCTestCase {
    func sample(_ cfg: SamplingConfig, _ logits: [Float], _ n: Int) -> [Int] {
        var s = Sampler(cfg)
        return (0..<n).map { _ in logits.withUnsafeBufferPointer { s.sample($0) } }
    }

    func testGreedyTiesGoToLowestId() {
        XCTAssertEqual(sample(.greedy, [0, 3, 1, 3, 3], 1), [1])
        XCTAssertEqual(sample(.greedy, [-1, -1], 1), [0])
    }

    func testSeededRunsRepeat() throws {
        let logits: [Float] = (0..<50).map { Float(($0 * 37) % 11) / 3 }
        let cfg = try SamplingConfig(temperature: 1.0, topK: 20, topP: 0.9, seed: 42)
        XCTAssertEqual(sample(cfg, logits, 200), sample(cfg, logits, 200))
        let other = try SamplingConfig(temperature: 1.0, topK: 20, topP: 0.9, seed: 43)
        XCTAssertNotEqual(sample(cfg, logits, 200), sample(other, logits, 200))
    }

    func testFilters() throws {
        let logits: [Float] = [1, 5, 2, 4, 3]
        // top-k 2 keeps ids 1 and 3 only.
        XCTAssertEqual(Set(sample(try SamplingConfig(temperature: 1, topK: 2, seed: 1), logits, 500)), [1, 3])
        // a tiny top-p keeps the single most likely id.
        XCTAssertEqual(Set(sample(try SamplingConfig(temperature: 1, topP: 1e-6, seed: 1), logits, 100)), [1])
    }

    func testTemperatureFollowsSoftmax() throws {
        let logits: [Float] = [0, log(2), log(5)]  // softmax = 1/8, 2/8, 5/8
        let draws = sample(try SamplingConfig(temperature: 1, seed: 7), logits, 40_000)
        for (id, p) in [(0, 0.125), (1, 0.25), (2, 0.625)] {
            let f = Double(draws.filter { $0 == id }.count) / Double(draws.count)
            XCTAssertEqual(f, p, accuracy: 0.01, "id \(id)")
        }
    }

    func testRejectsBadConfig() {
        XCTAssertThrowsError(try SamplingConfig(temperature: -1))
        XCTAssertThrowsError(try SamplingConfig(topK: -1))
        XCTAssertThrowsError(try SamplingConfig(topP: 0))
    }

    func testPlanChunks() {
        XCTAssertEqual(planChunks(70, seqLens: [32, 1]), [32, 32, 1, 1, 1, 1, 1, 1])
        XCTAssertEqual(planChunks(3, seqLens: [32, 1]), [1, 1, 1])
        XCTAssertEqual(planChunks(0, seqLens: [32, 1]), [])
    }
}
