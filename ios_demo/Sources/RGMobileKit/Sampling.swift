import Foundation

/// temperature 0 means greedy (argmax, lowest id on ties); topK 0 and topP 1 disable those
/// filters (runtime_py/sampling.py). A seed makes a run reproducible in this engine (the
/// generator is SplitMix64, not numpy's: seeded runs do not match Python's token for token).
public struct SamplingConfig {
    public var temperature: Double
    public var topK: Int
    public var topP: Double
    public var seed: UInt64?

    public init(temperature: Double = 0, topK: Int = 0, topP: Double = 1, seed: UInt64? = nil) throws {
        if temperature < 0 { throw RGError("temperature must be >= 0, got \(temperature)") }
        if topK < 0 { throw RGError("top-k must be >= 0, got \(topK)") }
        if !(topP > 0 && topP <= 1) { throw RGError("top-p must be in (0, 1], got \(topP)") }
        self.temperature = temperature; self.topK = topK; self.topP = topP; self.seed = seed
    }

    public static let greedy = try! SamplingConfig()
}

/// SplitMix64: small, fast, and the same sequence on every platform for a given seed.
public struct SplitMix64: RandomNumberGenerator {
    var state: UInt64
    public init(seed: UInt64) { state = seed }
    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
    /// Uniform in [0, 1) with 53 random bits.
    mutating func unit() -> Double { Double(next() >> 11) * (1.0 / 9_007_199_254_740_992.0) }
}

public struct Sampler {
    public let config: SamplingConfig
    var rng: SplitMix64

    public init(_ config: SamplingConfig) {
        self.config = config
        var system = SystemRandomNumberGenerator()
        rng = SplitMix64(seed: config.seed ?? system.next())
    }

    /// The argmax of logits [v]; ties go to the lowest id.
    public static func argmax(_ logits: UnsafeBufferPointer<Float>) -> Int {
        guard !logits.isEmpty else { return 0 }
        var best = 0
        var value = logits[0]
        for i in 1..<logits.count where logits[i] > value {  // strictly greater: the first maximum wins
            best = i; value = logits[i]
        }
        return best
    }

    /// logits [v] -> token id.
    public mutating func sample(_ logits: UnsafeBufferPointer<Float>) -> Int {
        if config.temperature == 0 { return Sampler.argmax(logits) }
        let v = logits.count
        var z = logits.map { Double($0) / config.temperature }
        if config.topK > 0 && config.topK < v {
            let kth = z.sorted(by: >)[config.topK - 1]  // values equal to the k-th stay in, as numpy's partition
            for i in 0..<v where z[i] < kth { z[i] = -.infinity }
        }
        let top = z.max() ?? 0
        var p = z.map { exp($0 - top) }
        var total = p.reduce(0, +)
        for i in 0..<v { p[i] /= total }
        if config.topP < 1 {
            let order = (0..<v).sorted { p[$0] > p[$1] || (p[$0] == p[$1] && $0 < $1) }
            var keep = [Bool](repeating: false, count: v)
            var cum = 0.0
            for i in order {
                if cum < config.topP { keep[i] = true }  // smallest prefix whose mass reaches top_p
                cum += p[i]
            }
            for i in 0..<v where !keep[i] { p[i] = 0 }
            total = p.reduce(0, +)
            for i in 0..<v { p[i] /= total }
        }
        let u = rng.unit()
        var cum = 0.0
        var last = 0
        for i in 0..<v where p[i] > 0 {
            cum += p[i]
            last = i
            if u < cum { return i }
        }
        return last
    }
}
