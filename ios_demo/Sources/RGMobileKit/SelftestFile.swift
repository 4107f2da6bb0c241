import Foundation

/// `selftest.json` (schema 1, docs/bundle.md): golden cases a runtime checks itself against.
public struct SelftestFile: Decodable {
    public static let schemaVersion = 1

    public struct Tolerances: Decodable {
        public let max_abs_logits: Double
        public let top1_agreement: Double
        public let greedy_match: Double
    }

    public struct Check: Decodable {
        public let step: Int
        public let position: Int
        public let top_ids: [Int]
        public let top_values: [Double]
        public let sum: Double
        public let sum_abs: Double
    }

    public struct Case: Decodable {
        public let name: String
        public let prompt: String
        public let prompt_ids: [Int]
        public let max_new_tokens: Int
        public let reference_greedy_ids: [Int]
        public let artifact_greedy_ids: [Int]?
        public let checks: [Check]
    }

    public struct TokenizerCase: Decodable {
        public let text: String
        public let ids: [Int]
        public let decoded: String
    }

    public let format: String
    public let schema_version: Int
    public let artifact_format: String
    public let precision: String
    public let vocab_size: Int
    public let tolerances: Tolerances
    public let cases: [Case]
    public let tokenizer: [TokenizerCase]

    public static func read(_ url: URL) throws -> SelftestFile {
        let data: Data
        do { data = try Data(contentsOf: url) } catch {
            throw RGError("\(url.path): cannot read the self-test file; re-copy the bundle")
        }
        struct Head: Decodable { let format: String?; let schema_version: Int? }
        guard let head = try? JSONDecoder().decode(Head.self, from: data), head.format == "rgmobile-selftest",
              let version = head.schema_version else {
            throw RGError("\(url.path): not an rgmobile self-test file (format must be 'rgmobile-selftest')")
        }
        if version > schemaVersion {
            throw RGError("\(url.path): schema_version \(version) is newer than this app reads (\(schemaVersion)); upgrade the app")
        }
        return try decodeJSON(SelftestFile.self, from: data, where: url.path)
    }
}
