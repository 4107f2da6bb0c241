import Foundation

/// A tensor's raw little-endian bytes with its dtype ("int64", "float32", "float16") and shape:
/// how a state crosses between a backend and a state file.
public struct TensorData: Equatable {
    public var dtype: String
    public var shape: [Int]
    public var bytes: [UInt8]

    public init(dtype: String, shape: [Int], bytes: [UInt8]) {
        self.dtype = dtype; self.shape = shape; self.bytes = bytes
    }

    public static func elementSize(_ dtype: String) -> Int { dtype == "float16" ? 2 : dtype == "int64" ? 8 : 4 }

    /// The same values as `dtype` (float32 <-> float16 only; other pairs are returned unchanged).
    public func converted(to dtype: String) -> TensorData {
        if dtype == self.dtype { return self }
        var out = [UInt8]()
        if self.dtype == "float16" && dtype == "float32" {
            out.reserveCapacity(bytes.count * 2)
            for i in stride(from: 0, to: bytes.count, by: 2) {
                let f = Half.toFloat(UInt16(bytes[i]) | UInt16(bytes[i + 1]) << 8).bitPattern
                for k in 0..<4 { out.append(UInt8(truncatingIfNeeded: f >> (8 * UInt32(k)))) }
            }
        } else if self.dtype == "float32" && dtype == "float16" {
            out.reserveCapacity(bytes.count / 2)
            for i in stride(from: 0, to: bytes.count, by: 4) {
                let bits = UInt32(bytes[i]) | UInt32(bytes[i + 1]) << 8 | UInt32(bytes[i + 2]) << 16 | UInt32(bytes[i + 3]) << 24
                let h = Half.fromFloat(Float(bitPattern: bits))
                out.append(UInt8(truncatingIfNeeded: h)); out.append(UInt8(truncatingIfNeeded: h >> 8))
            }
        } else {
            return self
        }
        return TensorData(dtype: dtype, shape: shape, bytes: out)
    }
}

/// IEEE half <-> float, by hand (Swift's Float16 is missing on Intel Macs).
enum Half {
    static func toFloat(_ h: UInt16) -> Float {
        let sign = UInt32(h & 0x8000) << 16
        let exp = Int((h >> 10) & 0x1F)
        let frac = UInt32(h & 0x3FF)
        if exp == 0 {
            let v = Float(frac) * pow(2, -24)
            return sign != 0 ? -v : v
        }
        if exp == 31 { return Float(bitPattern: sign | 0x7F80_0000 | frac << 13) }
        return Float(bitPattern: sign | UInt32(exp - 15 + 127) << 23 | frac << 13)
    }

    static func fromFloat(_ f: Float) -> UInt16 {
        let bits = f.bitPattern
        let sign = UInt16((bits >> 16) & 0x8000)
        if f.isNaN { return sign | 0x7E00 }
        let a = abs(f)
        if a >= 65520 { return sign | 0x7C00 }  // rounds to infinity
        if a < pow(2, -14) {  // subnormal half: round to nearest even in units of 2^-24
            return sign | UInt16((a * pow(2, 24)).rounded(.toNearestOrEven))
        }
        let exp = Int((bits >> 23) & 0xFF) - 127 + 15
        var mant = (bits & 0x7F_FFFF) >> 13
        let rest = bits & 0x1FFF
        var e = UInt32(exp)
        if rest > 0x1000 || (rest == 0x1000 && mant & 1 == 1) {
            mant += 1
            if mant == 0x400 { mant = 0; e += 1 }
        }
        return sign | UInt16(e << 10) | UInt16(mant)
    }
}

/// A backend's state: opaque to the loop, handed from one step to the next.
public protocol ModelState: AnyObject {}

/// What the generation loop and the self-test need from a runtime (runtime_py/backend.py).
/// Shapes: ids / positions [t] (batch 1); logits [t, v] float32, row-major, or [1, v] (the last
/// position's only) when the programs were exported with last-position logits.
public protocol Backend: AnyObject {
    var name: String { get }
    var manifest: Manifest { get }
    /// Step lengths this backend runs, largest first; always includes 1.
    var seqLens: [Int] { get }
    func initState() throws -> ModelState
    /// Run t tokens (t in seqLens) from their absolute positions; returns (logits [t * v] or [v], next state).
    func step(ids: [Int64], positions: [Int64], state: ModelState) throws -> ([Float], ModelState)
    /// The state as tensors keyed by IOSpec input name, in the IOSpec's dtypes.
    func stateTensors(_ state: ModelState) throws -> [String: TensorData]
    /// Inverse of stateTensors.
    func state(from tensors: [String: TensorData]) throws -> ModelState
}

/// Rows in `count` logits of a step of `tokens` tokens: `tokens` (every position's, io spec logits
/// ["batch", "seq", v]) or 1 (the last one's, ["batch", 1, v]); any other size is refused.
public func logitsRows(_ count: Int, tokens: Int, vocab: Int) throws -> Int {
    let rows = count / vocab
    if count % vocab != 0 || (rows != tokens && rows != 1) {
        throw RGError("a step of \(tokens) tokens returned \(count) logits, not [\(tokens), \(vocab)] (every position's) or "
            + "[1, \(vocab)] (the last one's); the program does not match the manifest's io spec, re-export the artifact")
    }
    return rows
}

/// The last position's logits [v] of a step of `tokens` tokens (either form of `logitsRows`).
public func lastLogits(_ logits: [Float], tokens: Int, vocab: Int) throws -> [Float] {
    let rows = try logitsRows(logits.count, tokens: tokens, vocab: vocab)
    return rows == 1 ? logits : Array(logits[((rows - 1) * vocab)...])
}

/// Split `length` prompt tokens into supported step lengths, largest first, never padded
/// (padding would advance the recurrent state on fake tokens). As runtime_py/backend.py.
public func planChunks(_ length: Int, seqLens: [Int]) -> [Int] {
    var out = [Int]()
    var left = length
    for s in Set(seqLens.filter { $0 >= 1 } + [1]).sorted(by: >) {
        while left >= s { out.append(s); left -= s }
    }
    return out
}
