import Foundation

/// One graph input or output of the step (exporter/step/iospec.py): symbolic dims "batch" and
/// "seq" are strings, fixed dims integers.
public struct TensorSpec: Codable, Equatable {
    public enum Dim: Codable, Equatable {
        case fixed(Int), symbol(String)
        public init(from decoder: Decoder) throws {
            let c = try decoder.singleValueContainer()
            if let n = try? c.decode(Int.self) { self = .fixed(n) } else { self = .symbol(try c.decode(String.self)) }
        }
        public func encode(to encoder: Encoder) throws {
            var c = encoder.singleValueContainer()
            switch self { case .fixed(let n): try c.encode(n); case .symbol(let s): try c.encode(s) }
        }
        public var description: String {
            switch self { case .fixed(let n): return "\(n)"; case .symbol(let s): return s }
        }
    }

    public let name: String
    public let dtype: String  // int64 | float32 | float16
    public let shape: [Dim]
    public let role: String  // tokens | positions | state | logits
    public let layer: Int?
    public let field: String?
    public let pair: String?
    public let init_: String?

    enum CodingKeys: String, CodingKey { case name, dtype, shape, role, layer, field, pair, init_ = "init" }

    /// The shape with batch and seq bound.
    public func concreteShape(batch: Int = 1, seq: Int = 1) -> [Int] {
        shape.map {
            switch $0 {
            case .fixed(let n): return n
            case .symbol(let s): return s == "batch" ? batch : seq
            }
        }
    }

    public var elementCount: Int { concreteShape().reduce(1, *) }
}

public struct IOSpec: Codable, Equatable {
    public let inputs: [TensorSpec]
    public let outputs: [TensorSpec]
    public var stateInputs: [TensorSpec] { inputs.filter { $0.role == "state" } }
    public var stateOutputs: [TensorSpec] { outputs.filter { $0.role == "state" } }
}

/// One program: `seq_len` tokens per call, or with `min_seq_len` any t from it to `seq_len` (a
/// symbolic token dim, so a prompt's remainder after its last whole chunk is one call).
public struct Program: Codable, Equatable {
    public let file: String
    public let seq_len: Int
    public let entry: String?
    public let min_seq_len: Int?

    public init(file: String, seq_len: Int, entry: String? = nil, min_seq_len: Int? = nil) {
        self.file = file; self.seq_len = seq_len; self.entry = entry; self.min_seq_len = min_seq_len
    }

    /// Every t this program runs (empty for an invalid min_seq_len, which the manifest check refuses).
    public var lengths: [Int] { let low = min_seq_len ?? seq_len; return low <= seq_len ? Array(low...seq_len) : [] }
}

/// Step lengths as runs, longest first: "128..2, 1" (exporter/artifact/manifest.py describe_lengths).
public func describeLengths(_ lengths: [Int]) -> String {
    var runs: [(Int, Int)] = []
    for t in Set(lengths).sorted(by: >) {
        if let last = runs.last, last.1 == t + 1 { runs[runs.count - 1].1 = t } else { runs.append((t, t)) }
    }
    return runs.map { $0.0 == $0.1 ? "\($0.0)" : "\($0.0)..\($0.1)" }.joined(separator: ", ")
}

public struct FileEntry: Codable, Equatable {
    public let path: String
    public let size: Int
    public let sha256: String
}

public struct Identity: Codable, Equatable {
    public let config_sha256: String
    public let weights_sha256: String
    public let precision: String

    /// One line naming the first field that differs (nil when they agree); as runtime_py/identity.py.
    public func mismatch(_ other: Identity) -> String? {
        if config_sha256 != other.config_sha256 { return "it was saved from a model with a different config" }
        if weights_sha256 != other.weights_sha256 { return "it was saved from a model with different weights" }
        if precision != other.precision {
            return "it was saved at precision '\(precision)', this model runs '\(other.precision)'"
        }
        return nil
    }
}

/// The parsed `manifest.json` (exporter/artifact/manifest.py documents every field). Unknown
/// top-level keys are ignored; `bundle`, `identity` and `runtime_requirements` are optional.
public struct Manifest: Decodable {
    public static let schemaVersion = 1
    public static let fileName = "manifest.json"

    public let schema_version: Int
    public let format: String
    public let rgmobile_version: String
    public let precision: String
    public let config: ModelConfig
    public let special_tokens: [String: Int]
    public let tokenizer_file: String
    public let prefill_chunk: Int
    public let io: IOSpec
    public let programs: [String: Program]
    public let files: [FileEntry]
    public let format_details: [String: JSONValue]
    public let identity: Identity?
    public let runtime_requirements: [String: String]?
    public let bundle: JSONValue?

    public struct ModelConfig: Codable, Equatable {
        public let vocab_size: Int
        public let width: Int
        public let block_types: [String]
        public let window: Int
        public let bos_id: Int
        public let eos_id: Int
        public let pad_id: Int
        public var num_layers: Int { block_types.count }
    }

    public var bosId: Int { special_tokens["bos_id"] ?? config.bos_id }
    public var eosId: Int { special_tokens["eos_id"] ?? config.eos_id }
    public var vocabSize: Int { config.vocab_size }
    /// Every step length some program runs, largest first.
    public var seqLens: [Int] { Array(Set(programs.values.flatMap(\.lengths))).sorted(by: >) }

    /// Parse and check: refuses a newer schema_version and inconsistent programs/files/io.
    public static func parse(_ data: Data, where path: String) throws -> Manifest {
        struct Version: Decodable { let schema_version: Int? }
        guard let version = (try? JSONDecoder().decode(Version.self, from: data))?.schema_version else {
            throw RGError("\(path): not valid JSON or no integer schema_version; not an rgmobile manifest")
        }
        if version > schemaVersion {
            throw RGError("\(path): schema_version \(version) is newer than this app reads (\(schemaVersion)); upgrade the app")
        }
        if version < 1 { throw RGError("\(path): invalid schema_version \(version)") }
        let m = try decodeJSON(Manifest.self, from: data, where: path)
        try m.checkConsistency(path)
        return m
    }

    func checkConsistency(_ path: String) throws {
        let listed = Set(files.map(\.path))
        if listed.count != files.count { throw RGError("\(path): a file is listed twice in 'files'") }
        for f in files { try Manifest.checkRelative(f.path, path) }
        if !programs.values.contains(where: { $0.seq_len == 1 }) {
            throw RGError("\(path): no program with seq_len 1 (decode)")
        }
        if prefill_chunk != programs.values.map(\.seq_len).max() {
            throw RGError("\(path): prefill_chunk \(prefill_chunk) is not the largest program seq_len")
        }
        var owner: [Int: String] = [:]
        for (name, p) in programs.sorted(by: { $0.key < $1.key }) {
            if let low = p.min_seq_len, !(1...p.seq_len).contains(low) {
                throw RGError("\(path): program '\(name)' 'min_seq_len' must be an integer from 1 to its seq_len")
            }
            for t in p.lengths {
                if let other = owner[t] { throw RGError("\(path): programs '\(other)' and '\(name)' both run \(t) tokens per step") }
                owner[t] = name
            }
        }
        for (name, p) in programs {
            try Manifest.checkRelative(p.file, path)
            let dir = p.file.hasSuffix("/") ? p.file : p.file + "/"
            if !listed.contains(p.file) && !listed.contains(where: { $0.hasPrefix(dir) }) {
                throw RGError("\(path): program '\(name)' file '\(p.file)' is not listed in 'files'")
            }
        }
        if !listed.contains(tokenizer_file) {
            throw RGError("\(path): tokenizer_file '\(tokenizer_file)' is not listed in 'files'")
        }
        guard io.inputs.count >= 2, io.inputs[0].role == "tokens", io.inputs[1].role == "positions",
              io.outputs.first?.role == "logits" else {
            throw RGError("\(path): io must be (input_ids, position_ids, state...) -> (logits, state...)")
        }
        // The middle dim: "seq" (every position's logits) or 1 (exported with last-position logits).
        // A JSON integer decodes as .fixed, a string as .symbol: the string "1" is refused.
        let logits = io.outputs[0].shape
        guard logits.count == 3, logits[0] == .symbol("batch"), logits[1] == .symbol("seq") || logits[1] == .fixed(1) else {
            let got = logits.map(\.description).joined(separator: ", ")
            throw RGError("\(path): logits shape must be [batch, seq or 1, vocab], got [\(got)]; re-export the artifact")
        }
        if io.outputs[0].concreteShape().last != config.vocab_size {
            throw RGError("\(path): logits width differs from config vocab_size \(config.vocab_size)")
        }
        let outs = Dictionary(io.outputs.map { ($0.name, $0) }, uniquingKeysWith: { a, _ in a })
        for s in io.stateInputs {
            guard let o = outs[s.pair ?? ""], o.role == "state", o.shape == s.shape, o.dtype == s.dtype else {
                throw RGError("\(path): state input \(s.name) is not paired with a matching state output")
            }
            if s.init_ != nil && s.init_ != "zeros" { throw RGError("\(path): unsupported init for \(s.name)") }
        }
    }

    static func checkRelative(_ p: String, _ path: String) throws {
        if p.isEmpty || p.hasPrefix("/") || p.contains("\\") || p.split(separator: "/").contains("..") {
            throw RGError("\(path): file path '\(p)' must be relative, inside the bundle, with '/'")
        }
    }
}
