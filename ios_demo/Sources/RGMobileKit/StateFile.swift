import Foundation

/// Saved generation states (`*.rgstate`, schema 1; docs/bundle.md "Saved states"): a
/// safetensors file (8-byte little-endian header length, JSON header, raw little-endian data).
/// Tensors: `token_ids` (int64 [n], BOS first) and every IOSpec state input, batch 1.
/// Invariant: position == n - 1; the state holds the effect of token_ids[:-1].
public struct SavedState {
    public static let format = "rgmobile-state"
    public static let schemaVersion = 1
    static let tokensName = "token_ids"
    static let maxHeaderBytes = 1 << 20

    public let tokenIds: [Int]
    public let tensors: [String: TensorData]
    public let identity: Identity
    public var position: Int { tokenIds.count - 1 }

    public init(tokenIds: [Int], tensors: [String: TensorData], identity: Identity) {
        self.tokenIds = tokenIds; self.tensors = tensors; self.identity = identity
    }

    static let dtypeCodes = ["int64": "I64", "float32": "F32", "float16": "F16"]

    /// Write atomically; returns the file size in bytes.
    @discardableResult
    public func write(to url: URL, io: IOSpec) throws -> Int {
        guard !tokenIds.isEmpty else { throw RGError("cannot save a state without tokens") }
        var entries: [(String, TensorData)] = [
            (SavedState.tokensName, TensorData(dtype: "int64", shape: [tokenIds.count],
                                               bytes: tokenIds.flatMap { littleEndian(Int64($0)) })),
        ]
        for s in io.stateInputs {
            guard let t = tensors[s.name], t.shape == s.concreteShape() else {
                throw RGError("cannot save the state: \(s.name) is missing or mis-shaped")
            }
            entries.append((s.name, t.converted(to: s.dtype)))
        }
        var header: [String: Any] = ["__metadata__": [
            "rgmobile.format": SavedState.format,
            "rgmobile.schema_version": String(SavedState.schemaVersion),
            "rgmobile.position": String(position),
            "rgmobile.config_sha256": identity.config_sha256,
            "rgmobile.weights_sha256": identity.weights_sha256,
            "rgmobile.precision": identity.precision,
        ]]
        var offset = 0
        for (name, t) in entries {
            header[name] = ["dtype": SavedState.dtypeCodes[t.dtype]!, "shape": t.shape, "data_offsets": [offset, offset + t.bytes.count]]
            offset += t.bytes.count
        }
        var json = [UInt8](try JSONSerialization.data(withJSONObject: header, options: [.sortedKeys]))
        while json.count % 8 != 0 { json.append(0x20) }  // data starts 8-byte aligned, as safetensors writes it
        var file = littleEndian(UInt64(json.count)) + json
        file.reserveCapacity(file.count + offset)
        for (_, t) in entries { file += t.bytes }
        do { try Data(file).write(to: url, options: .atomic) } catch {
            throw RGError("\(url.path): cannot write the state file (\(error.localizedDescription))")
        }
        return file.count
    }

    /// Read and check against the opener's identity and IOSpec (one clear error for each problem).
    public static func read(_ url: URL, identity: Identity, io: IOSpec) throws -> SavedState {
        let path = url.path
        guard let data = try? Data(contentsOf: url) else { throw RGError("\(path): cannot read the state file") }
        let raw = [UInt8](data)
        guard raw.count >= 8 else { throw RGError("\(path): not a state file (too short to be safetensors)") }
        let size = raw[0..<8].enumerated().reduce(UInt64(0)) { $0 | UInt64($1.element) << (8 * UInt64($1.offset)) }
        guard size <= UInt64(maxHeaderBytes), 8 + Int(size) <= raw.count else {
            throw RGError("\(path): not a state file or truncated (header of \(size) bytes in a \(raw.count)-byte file)")
        }
        guard let header = try? JSONSerialization.jsonObject(with: Data(raw[8..<(8 + Int(size))])) as? [String: Any] else {
            throw RGError("\(path): not a state file (its header is not JSON)")
        }
        let meta = header["__metadata__"] as? [String: String] ?? [:]
        guard meta["rgmobile.format"] == format else {
            throw RGError("\(path): not an rgmobile state (format '\(meta["rgmobile.format"] ?? "none")', expected '\(format)')")
        }
        guard let version = Int(meta["rgmobile.schema_version"] ?? ""), version >= 1 else {
            throw RGError("\(path): invalid rgmobile.schema_version")
        }
        if version > schemaVersion {
            throw RGError("\(path): state schema_version \(version) is newer than this app reads (\(schemaVersion)); upgrade the app")
        }
        let saved = Identity(config_sha256: meta["rgmobile.config_sha256"] ?? "", weights_sha256: meta["rgmobile.weights_sha256"] ?? "",
                             precision: meta["rgmobile.precision"] ?? "")
        if let why = saved.mismatch(identity) { throw RGError("\(path): this state does not belong to the model being run: \(why)") }
        let base = 8 + Int(size)
        func tensor(_ name: String) throws -> TensorData? {
            guard let e = header[name] as? [String: Any] else { return nil }
            guard let code = e["dtype"] as? String, let dtype = dtypeCodes.first(where: { $0.value == code })?.key,
                  let shape = e["shape"] as? [Int], let offs = e["data_offsets"] as? [Int], offs.count == 2,
                  offs[0] >= 0, offs[0] <= offs[1], base + offs[1] <= raw.count,
                  offs[1] - offs[0] == shape.reduce(1, *) * TensorData.elementSize(dtype) else {
                throw RGError("\(path): tensor \(name) has a bad header entry or the file is truncated")
            }
            return TensorData(dtype: dtype, shape: shape, bytes: Array(raw[(base + offs[0])..<(base + offs[1])]))
        }
        guard let tok = try tensor(tokensName), tok.dtype == "int64", tok.shape.count == 1, tok.shape[0] > 0 else {
            throw RGError("\(path): \(tokensName) must be a non-empty int64 vector")
        }
        let tokens = stride(from: 0, to: tok.bytes.count, by: 8).map { i in
            Int(Int64(bitPattern: (0..<8).reduce(UInt64(0)) { $0 | UInt64(tok.bytes[i + $1]) << (8 * UInt64($1)) }))
        }
        guard let position = Int(meta["rgmobile.position"] ?? ""), position == tokens.count - 1 else {
            throw RGError("\(path): rgmobile.position '\(meta["rgmobile.position"] ?? "")' breaks the invariant position == len(token_ids) - 1 (\(tokens.count - 1))")
        }
        var tensors = [String: TensorData]()
        for s in io.stateInputs {
            guard let t = try tensor(s.name) else { throw RGError("\(path): state tensor \(s.name) is missing") }
            if t.shape != s.concreteShape() {
                throw RGError("\(path): state tensor \(s.name) is \(t.shape), this model needs \(s.concreteShape())")
            }
            let floats: Set<String> = ["float32", "float16"]
            if t.dtype != s.dtype && !(floats.contains(t.dtype) && floats.contains(s.dtype)) {
                throw RGError("\(path): state tensor \(s.name) is \(t.dtype), this model needs \(s.dtype)")
            }
            tensors[s.name] = t.converted(to: s.dtype)
        }
        let known = Set(io.stateInputs.map(\.name) + [tokensName, "__metadata__"])
        if let extra = header.keys.filter({ !known.contains($0) }).sorted().first {
            throw RGError("\(path): unexpected tensor \(extra) (not in this model's io spec)")
        }
        return SavedState(tokenIds: tokens, tensors: tensors, identity: saved)
    }
}

func littleEndian<T: FixedWidthInteger>(_ v: T) -> [UInt8] {
    (0..<(T.bitWidth / 8)).map { UInt8(truncatingIfNeeded: v >> (8 * $0)) }
}
