import XCTest
@testable import RGMobileKit

final class TokenizerTests: XCTestCase {
    /// Every golden string of selftest.json (written by Python sentencepiece): ids and decoded text.
    func testGoldenStringsEqualSentencepiece() throws {
        let dir = try Fixtures.bundle("fp32")
        let tok = try SentencePieceTokenizer(url: dir.appendingPathComponent("tokenizer.model"))
        let st = try SelftestFile.read(dir.appendingPathComponent("selftest.json"))
        XCTAssertGreaterThanOrEqual(st.tokenizer.count, 200)
        for t in st.tokenizer {
            XCTAssertEqual(tok.encode(t.text), t.ids, "encode \(t.text.debugDescription)")
            XCTAssertEqual(Array(tok.decode(t.ids).unicodeScalars), Array(t.decoded.unicodeScalars), "decode \(t.ids)")
        }
        for c in st.cases { XCTAssertEqual(tok.encode(c.prompt, addBos: true), c.prompt_ids, c.name) }
        XCTAssertEqual([tok.padId, tok.eosId, tok.bosId, tok.unkId], [0, 1, 2, 3])
    }

    /// sentencepiece turns every byte of an invalid UTF-8 run into its own U+FFFD.
    func testInvalidBytesBecomeOneReplacementEach() {
        let s = SentencePieceTokenizer.utf8Surface([0x41, 0xE2, 0x82, 0x42, 0xF0, 0x9F, 0x8C, 0x99])  // A, truncated €, B, 🌙
        XCTAssertEqual(String(decoding: s, as: UTF8.self), "A\u{FFFD}\u{FFFD}B🌙")
    }

    func testTextStreamConcatenatesToDecode() throws {
        let dir = try Fixtures.bundle("fp32")
        let tok = try SentencePieceTokenizer(url: dir.appendingPathComponent("tokenizer.model"))
        let ids = tok.encode("Café 東京 🌙✨ — “quotes” and plain words")
        let stream = TextStream(tok)
        var text = ""
        for id in ids { text += stream.push(id) }
        text += stream.flush()
        XCTAssertEqual(Array(text.unicodeScalars), Array(tok.decode(ids).unicodeScalars))
    }

    func testRefusesGarbage() {
        XCTAssertThrowsError(try SentencePieceTokenizer(data: [0x0A, 0xFF], where: "x")) // truncated field
        XCTAssertThrowsError(try SentencePieceTokenizer(data: [], where: "x"))  // no pieces
    }
}
