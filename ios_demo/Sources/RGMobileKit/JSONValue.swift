import Foundation

/// Any JSON value, for the manifest's free-form objects (format_details, quantization, bundle).
public enum JSONValue: Codable, Equatable {
    case null, bool(Bool), number(Double), string(String), array([JSONValue]), object([String: JSONValue])

    public init(from decoder: Decoder) throws {
        let c = try decoder.singleValueContainer()
        if c.decodeNil() { self = .null }
        else if let b = try? c.decode(Bool.self) { self = .bool(b) }
        else if let n = try? c.decode(Double.self) { self = .number(n) }
        else if let s = try? c.decode(String.self) { self = .string(s) }
        else if let a = try? c.decode([JSONValue].self) { self = .array(a) }
        else { self = .object(try c.decode([String: JSONValue].self)) }
    }

    public func encode(to encoder: Encoder) throws {
        var c = encoder.singleValueContainer()
        switch self {
        case .null: try c.encodeNil()
        case .bool(let b): try c.encode(b)
        case .number(let n): try c.encode(n)
        case .string(let s): try c.encode(s)
        case .array(let a): try c.encode(a)
        case .object(let o): try c.encode(o)
        }
    }

    public subscript(key: String) -> JSONValue? {
        if case .object(let o) = self { return o[key] }
        return nil
    }

    public var stringValue: String? { if case .string(let s) = self { return s }; return nil }
    public var arrayValue: [JSONValue]? { if case .array(let a) = self { return a }; return nil }
}

/// Decode `T` from a JSON file, turning decoding errors into one clear line.
func decodeJSON<T: Decodable>(_ type: T.Type, from data: Data, where path: String) throws -> T {
    do {
        return try JSONDecoder().decode(T.self, from: data)
    } catch let DecodingError.keyNotFound(key, ctx) {
        throw RGError("\(path): missing required field \(fieldPath(ctx.codingPath + [key]))")
    } catch let DecodingError.typeMismatch(_, ctx) {
        throw RGError("\(path): field \(fieldPath(ctx.codingPath)) has the wrong type")
    } catch let DecodingError.valueNotFound(_, ctx) {
        throw RGError("\(path): field \(fieldPath(ctx.codingPath)) is null")
    } catch {
        throw RGError("\(path): not valid JSON")
    }
}

private func fieldPath(_ keys: [CodingKey]) -> String {
    "'" + keys.map { $0.intValue.map(String.init) ?? $0.stringValue }.joined(separator: ".") + "'"
}
