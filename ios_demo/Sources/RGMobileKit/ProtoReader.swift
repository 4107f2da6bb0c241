import Foundation

/// The few protobuf wire-format reads tokenizer.model needs: varints, length-delimited fields
/// and 32-bit floats. Unknown fields are skipped by wire type.
struct ProtoReader {
    let bytes: [UInt8]
    var offset: Int
    let end: Int

    init(_ bytes: [UInt8], from: Int = 0, to: Int? = nil) {
        self.bytes = bytes
        offset = from
        end = to ?? bytes.count
    }

    var atEnd: Bool { offset >= end }

    mutating func varint() throws -> UInt64 {
        var result: UInt64 = 0
        var shift: UInt64 = 0
        while true {
            guard offset < end, shift < 64 else { throw RGError("tokenizer.model: truncated or invalid protobuf varint") }
            let b = bytes[offset]
            offset += 1
            result |= UInt64(b & 0x7f) << shift
            if b & 0x80 == 0 { return result }
            shift += 7
        }
    }

    /// (field number, wire type) of the next field.
    mutating func tag() throws -> (Int, Int) {
        let t = try varint()
        return (Int(t >> 3), Int(t & 7))
    }

    /// The byte range of a length-delimited field.
    mutating func lengthDelimited() throws -> Range<Int> {
        let n = Int(try varint())
        guard n >= 0, offset + n <= end else { throw RGError("tokenizer.model: truncated protobuf field") }
        defer { offset += n }
        return offset..<(offset + n)
    }

    mutating func fixed32() throws -> UInt32 {
        guard offset + 4 <= end else { throw RGError("tokenizer.model: truncated protobuf field") }
        defer { offset += 4 }
        return UInt32(bytes[offset]) | UInt32(bytes[offset + 1]) << 8 | UInt32(bytes[offset + 2]) << 16
            | UInt32(bytes[offset + 3]) << 24
    }

    mutating func skip(wireType: Int) throws {
        switch wireType {
        case 0: _ = try varint()
        case 1: guard offset + 8 <= end else { throw RGError("tokenizer.model: truncated protobuf field") }; offset += 8
        case 2: _ = try lengthDelimited()
        case 5: _ = try fixed32()
        default: throw RGError("tokenizer.model: unsupported protobuf wire type \(wireType)")
        }
    }

    func string(_ r: Range<Int>) -> String { String(decoding: bytes[r], as: UTF8.self) }
}
