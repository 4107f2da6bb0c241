import Foundation

/// A SentencePiece BPE tokenizer read from `tokenizer.model` (the protobuf ModelProto), with
/// byte fallback: what our models use (Gemma layout: pad 0, eos 1, bos 2, unk 3). It follows
/// sentencepiece's bpe_model.cc and its decoder, and is tested against sentencepiece's own
/// output (selftest.json "tokenizer").
///
/// Not supported (refused when the model needs it): unigram/word/char models and normalizers
/// with a precompiled character map (NFKC rules). UNUSED pieces never take part in merges.
public final class SentencePieceTokenizer {
    enum PieceType: Int { case normal = 1, unknown = 2, control = 3, userDefined = 4, unused = 5, byte = 6 }

    public let pieces: [String]
    let types: [PieceType]
    let scores: [Float]
    let mergeable: [[UInt8]: Int]  // UTF-8 of normal + user-defined pieces -> id (bytes: Swift's String
                                     // equality is canonical equivalence, sentencepiece compares bytes)
    let pieceBytes: [[UInt8]]
    let userDefined: [[Unicode.Scalar]]  // longest first
    var byteIds = [Int](repeating: -1, count: 256)
    public private(set) var unkId = 3, bosId = 2, eosId = 1, padId = 0
    var byteFallback = false
    var addDummyPrefix = true, removeExtraWhitespaces = true, escapeWhitespaces = true
    var unkSurface = " \u{2047} "

    static let space: Unicode.Scalar = "\u{2581}"  // ▁
    static let spaceBytes: [UInt8] = [0xE2, 0x96, 0x81]

    /// "▁" -> " ", on UTF-8 bytes.
    static func unescape(_ b: [UInt8]) -> [UInt8] {
        var out = [UInt8]()
        out.reserveCapacity(b.count)
        var i = 0
        while i < b.count {
            if i + 2 < b.count && b[i] == 0xE2 && b[i + 1] == 0x96 && b[i + 2] == 0x81 { out.append(0x20); i += 3 }
            else { out.append(b[i]); i += 1 }
        }
        return out
    }

    public var vocabSize: Int { pieces.count }

    public convenience init(url: URL) throws {
        let data: Data
        do { data = try Data(contentsOf: url) } catch {
            throw RGError("\(url.path): cannot read the tokenizer (expected a SentencePiece tokenizer.model)")
        }
        try self.init(data: [UInt8](data), where: url.path)
    }

    public init(data: [UInt8], where path: String) throws {
        var pieces = [String](), types = [PieceType](), scores = [Float]()
        var modelType = 1  // UNIGRAM is the proto default
        var charsmap = false, normalizerName = ""
        var trainer: (unk: Int?, bos: Int?, eos: Int?, pad: Int?, fallback: Bool, surface: String?) = (nil, nil, nil, nil, false, nil)
        var r = ProtoReader(data)
        do {
            while !r.atEnd {
                let (field, wire) = try r.tag()
                switch (field, wire) {
                case (1, 2):  // SentencePiece
                    let range = try r.lengthDelimited()
                    var p = ProtoReader(data, from: range.lowerBound, to: range.upperBound)
                    var piece = "", score: Float = 0, type = PieceType.normal
                    while !p.atEnd {
                        let (f, w) = try p.tag()
                        switch (f, w) {
                        case (1, 2): piece = p.string(try p.lengthDelimited())
                        case (2, 5): score = Float(bitPattern: try p.fixed32())
                        case (3, 0): type = PieceType(rawValue: Int(try p.varint())) ?? .normal
                        default: try p.skip(wireType: w)
                        }
                    }
                    pieces.append(piece); scores.append(score); types.append(type)
                case (2, 2):  // TrainerSpec
                    let range = try r.lengthDelimited()
                    var p = ProtoReader(data, from: range.lowerBound, to: range.upperBound)
                    while !p.atEnd {
                        let (f, w) = try p.tag()
                        switch (f, w) {
                        case (3, 0): modelType = Int(try p.varint())
                        case (35, 0): trainer.fallback = try p.varint() != 0
                        case (40, 0): trainer.unk = Int(Int32(truncatingIfNeeded: try p.varint()))
                        case (41, 0): trainer.bos = Int(Int32(truncatingIfNeeded: try p.varint()))
                        case (42, 0): trainer.eos = Int(Int32(truncatingIfNeeded: try p.varint()))
                        case (43, 0): trainer.pad = Int(Int32(truncatingIfNeeded: try p.varint()))
                        case (44, 2): trainer.surface = p.string(try p.lengthDelimited())
                        default: try p.skip(wireType: w)
                        }
                    }
                case (3, 2):  // NormalizerSpec
                    let range = try r.lengthDelimited()
                    var p = ProtoReader(data, from: range.lowerBound, to: range.upperBound)
                    while !p.atEnd {
                        let (f, w) = try p.tag()
                        switch (f, w) {
                        case (1, 2): normalizerName = p.string(try p.lengthDelimited())
                        case (2, 2): charsmap = !(try p.lengthDelimited()).isEmpty
                        case (3, 0): addDummyPrefix = try p.varint() != 0
                        case (4, 0): removeExtraWhitespaces = try p.varint() != 0
                        case (5, 0): escapeWhitespaces = try p.varint() != 0
                        default: try p.skip(wireType: w)
                        }
                    }
                default: try r.skip(wireType: wire)
                }
            }
        } catch let e as RGError {
            throw RGError("\(path): \(e.message)")
        }
        if pieces.isEmpty { throw RGError("\(path): not a SentencePiece model (no pieces)") }
        if modelType != 2 { throw RGError("\(path): SentencePiece model type \(modelType) is not BPE (2); this app reads BPE models only") }
        if charsmap { throw RGError("\(path): the tokenizer's normalizer '\(normalizerName)' needs a character map this app does not implement") }
        self.pieces = pieces
        self.types = types
        self.scores = scores
        var mergeable = [[UInt8]: Int]()
        var user = [[Unicode.Scalar]]()
        for (i, p) in pieces.enumerated() {
            switch types[i] {
            case .normal, .userDefined:
                if mergeable[Array(p.utf8)] == nil { mergeable[Array(p.utf8)] = i }
                if types[i] == .userDefined { user.append(Array(p.unicodeScalars)) }
            case .byte:
                if p.count == 6, p.hasPrefix("<0x"), let b = UInt8(p.dropFirst(3).prefix(2), radix: 16) { byteIds[Int(b)] = i }
            default: break
            }
        }
        self.mergeable = mergeable
        pieceBytes = pieces.map { Array($0.utf8) }
        userDefined = user.sorted { $0.count > $1.count }
        func id(_ v: Int?, _ d: Int) -> Int { v ?? d }
        unkId = id(trainer.unk, 0); bosId = id(trainer.bos, 1); eosId = id(trainer.eos, 2); padId = id(trainer.pad, -1)
        if trainer.unk == nil, let u = types.firstIndex(of: .unknown) { unkId = u }
        byteFallback = trainer.fallback
        if let s = trainer.surface { unkSurface = s }
    }

    // MARK: encode

    /// Token ids of `text` (no BOS; `addBos` puts `bosId` first), as sentencepiece's EncodeAsIds.
    public func encode(_ text: String, addBos: Bool = false) -> [Int] {
        var ids = addBos && bosId >= 0 ? [bosId] : []
        let scalars = normalize(text)
        if scalars.isEmpty { return ids }
        // Initial symbols: user-defined pieces (longest match) or single characters.
        var symbols = [[Unicode.Scalar]]()
        var i = 0
        outer: while i < scalars.count {
            for u in userDefined where u.count <= scalars.count - i && Array(scalars[i..<(i + u.count)]) == u {
                symbols.append(u); i += u.count; continue outer
            }
            symbols.append([scalars[i]]); i += 1
        }
        // Merge the best adjacent pair until none is a piece: highest score, then leftmost
        // (sentencepiece's agenda order).
        var strings = symbols.map { Array(String(String.UnicodeScalarView($0)).utf8) }
        while strings.count > 1 {
            var best = -1
            var bestScore = -Float.infinity
            for j in 0..<(strings.count - 1) {
                if let id = mergeable[strings[j] + strings[j + 1]], best < 0 || scores[id] > bestScore {
                    best = j; bestScore = scores[id]
                }
            }
            if best < 0 { break }
            strings[best].append(contentsOf: strings[best + 1])
            strings.remove(at: best + 1)
        }
        var previousUnknown = false
        for s in strings {
            if let id = mergeable[s] { ids.append(id); previousUnknown = false; continue }
            if byteFallback {
                for b in s { ids.append(byteIds[Int(b)] >= 0 ? byteIds[Int(b)] : unkId) }
            } else if !previousUnknown {
                ids.append(unkId)  // a run of unknown characters becomes one unk
            }
            previousUnknown = true
        }
        return ids
    }

    func normalize(_ text: String) -> [Unicode.Scalar] {
        var s = Array(text.unicodeScalars)
        if removeExtraWhitespaces {
            var out = [Unicode.Scalar]()
            for c in s where !(c == " " && (out.isEmpty || out.last == " ")) { out.append(c) }
            while out.last == " " { out.removeLast() }
            s = out
        }
        if s.isEmpty { return [] }
        if addDummyPrefix { s.insert(" ", at: 0) }
        if escapeWhitespaces { s = s.map { $0 == " " ? SentencePieceTokenizer.space : $0 } }
        return s
    }

    // MARK: decode

    /// Text of `ids`, as sentencepiece's DecodeIds: control ids vanish, byte pieces are joined and
    /// read as UTF-8 (each invalid byte becomes U+FFFD), "▁" becomes a space.
    public func decode(_ ids: [Int]) -> String {
        var out = [UInt8]()
        var bytes = [UInt8]()
        var atStart = true  // no text emitted yet: a leading space may be consumed
        func flushBytes() {
            if bytes.isEmpty { return }
            out += SentencePieceTokenizer.utf8Surface(bytes)
            bytes.removeAll()
            atStart = false
        }
        for id in ids {
            guard id >= 0, id < pieces.count else { continue }
            let type = types[id]
            if type == .byte {
                if let b = UInt8(pieces[id].dropFirst(3).prefix(2), radix: 16) { bytes.append(b) }
                continue
            }
            flushBytes()
            var surface: [UInt8]
            switch type {
            case .control: surface = []
            case .unknown: surface = Array(unkSurface.utf8)
            default:
                surface = pieceBytes[id]
                if atStart && (addDummyPrefix || removeExtraWhitespaces) && surface.starts(with: SentencePieceTokenizer.spaceBytes) {
                    surface.removeFirst(3)
                }
                if escapeWhitespaces { surface = SentencePieceTokenizer.unescape(surface) }
            }
            if !surface.isEmpty { atStart = false }
            out += surface
        }
        flushBytes()
        return String(decoding: out, as: UTF8.self)
    }

    /// sentencepiece's reading of a byte run: valid UTF-8 characters as they are, every other
    /// byte as U+FFFD (one per byte, unlike Swift's decoder which folds a truncated sequence).
    static func utf8Surface(_ b: [UInt8]) -> [UInt8] {
        let replacement: [UInt8] = [0xEF, 0xBF, 0xBD]
        var out = [UInt8]()
        var i = 0
        func cont(_ k: Int) -> Bool { i + k < b.count && b[i + k] & 0xC0 == 0x80 }
        func valid(_ c: UInt32) -> Bool { c < 0xD800 || (c >= 0xE000 && c <= 0x10FFFF) }
        while i < b.count {
            let c0 = UInt32(b[i])
            var len = 0
            if c0 < 0x80 {
                len = 1
            } else if c0 & 0xE0 == 0xC0, cont(1) {
                let c = (c0 & 0x1F) << 6 | UInt32(b[i + 1] & 0x3F)
                if c >= 0x80 && valid(c) { len = 2 }
            } else if c0 & 0xF0 == 0xE0, cont(1), cont(2) {
                let c = (c0 & 0x0F) << 12 | UInt32(b[i + 1] & 0x3F) << 6 | UInt32(b[i + 2] & 0x3F)
                if c >= 0x800 && valid(c) { len = 3 }
            } else if c0 & 0xF8 == 0xF0, cont(1), cont(2), cont(3) {
                let c = (c0 & 0x07) << 18 | UInt32(b[i + 1] & 0x3F) << 12 | UInt32(b[i + 2] & 0x3F) << 6 | UInt32(b[i + 3] & 0x3F)
                if c >= 0x10000 && valid(c) { len = 4 }
            }
            if len == 0 { out += replacement; i += 1 } else { out += b[i..<(i + len)]; i += len }
        }
        return out
    }
}
