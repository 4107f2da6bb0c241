import Foundation

/// Incremental detokenizer (runtime_py/generate.py TextStream): each pushed id returns the text
/// it adds. Holds ids while the decoded text ends in an incomplete UTF-8 sequence, so the bytes
/// of one character are emitted together; the pieces concatenate to decode(all ids).
public final class TextStream {
    let tokenizer: SentencePieceTokenizer
    let maxHold: Int
    var ids = [Int]()
    var prefix = 0, read = 0
    var prefixText = ""

    public init(_ tokenizer: SentencePieceTokenizer, maxHold: Int = 64) {
        self.tokenizer = tokenizer; self.maxHold = maxHold
    }

    public func push(_ token: Int) -> String {
        ids.append(token)
        let text = tokenizer.decode(Array(ids[prefix...]))
        if text.unicodeScalars.last == "\u{FFFD}" && ids.count - read < maxHold { return "" }
        let new = String(text.unicodeScalars.dropFirst(prefixText.unicodeScalars.count))
        (prefix, read) = (read, ids.count)
        prefixText = tokenizer.decode(Array(ids[prefix..<read]))
        return new
    }

    public func flush() -> String {
        if read == ids.count { return "" }
        let text = tokenizer.decode(Array(ids[prefix...]))
        (prefix, read) = (read, ids.count)
        return String(text.unicodeScalars.dropFirst(prefixText.unicodeScalars.count))
    }
}

public struct GenerationResult {
    public var promptIds: [Int]  // every token before the generated ones (a resumed state's first)
    public var newIds: [Int] = []
    public var text = ""
    public var stoppedOnEos = false
    public var prefillSeconds = 0.0
    public var decodeSeconds = 0.0
    public var resumedTokens = 0
    public var stateBytes = 0

    /// Decode steps per second (the first new token comes from the prefill).
    public var decodeTokensPerSecond: Double {
        decodeSeconds > 0 ? Double(max(newIds.count - 1, 0)) / decodeSeconds : 0
    }
}

/// A bundle opened for generation: backend + tokenizer + the loop of docs/bundle.md
/// ("The step and the loop"), following runtime_py/generate.py step for step.
public final class Engine {
    public let bundle: RGBundle
    public let backend: Backend
    public let tokenizer: SentencePieceTokenizer

    public init(bundle: RGBundle, backend: Backend) throws {
        self.bundle = bundle
        self.backend = backend
        tokenizer = try SentencePieceTokenizer(url: bundle.url(bundle.manifest.tokenizer_file))
        if tokenizer.vocabSize != bundle.manifest.vocabSize {
            throw RGError("\(bundle.directory.path): tokenizer has \(tokenizer.vocabSize) pieces, the model \(bundle.manifest.vocabSize); re-package the bundle")
        }
    }

    /// Open an ONNX bundle (the format this engine runs everywhere; Core ML on Apple via CoreMLBackend).
    /// `ortLibrary`: the onnxruntime library to load (default $RGMOBILE_ORT_LIB, else the system's).
    /// `spin: false`: onnxruntime's idle threads block instead of spin-waiting (ONNX bundles only).
    public static func open(_ directory: URL, threads: Int = 0, spin: Bool = true, verify: Bool = true, ortLibrary: String? = nil) throws -> Engine {
        let bundle = try RGBundle(directory: directory, verify: verify)
        switch bundle.manifest.format {
        case "onnx":
            return try Engine(bundle: bundle, backend: OnnxBackend(bundle: bundle, threads: threads, spin: spin, libraryPath: ortLibrary))
        #if canImport(CoreML)
        case "coreml":
            if !spin { throw RGError("spin-wait off (--no-spin): Core ML runs on a thread pool this app cannot stop spinning; only onnx bundles can") }
            return try Engine(bundle: bundle, backend: CoreMLBackend(bundle: bundle))
        #endif
        default:
            throw RGError("\(directory.path): bundle format '\(bundle.manifest.format)' is not supported by this app")
        }
    }

    public var identity: Identity {
        get throws {
            guard let id = bundle.manifest.identity else {
                throw RGError("the bundle's manifest has no identity (exported by an older rgmobile); re-export it to save or resume states")
            }
            return id
        }
    }

    /// Feed `ids` from absolute position `start` in supported chunks. Returns the last position's
    /// logits [v] (or every position's [n * v] with `allLogits`, which programs exported with
    /// last-position logits cannot give) and the state after the last token.
    public func run(_ ids: [Int], state: ModelState, start: Int, allLogits: Bool = false) throws -> ([Float], ModelState) {
        let chunks = planChunks(ids.count, seqLens: backend.seqLens)
        guard !chunks.isEmpty else { throw RGError("nothing to run: the prompt is empty") }
        var state = state
        var out = [Float]()
        var offset = 0
        let v = bundle.manifest.vocabSize
        for n in chunks {
            let chunk = ids[offset..<(offset + n)].map(Int64.init)  // [n]
            let positions = (start + offset..<start + offset + n).map(Int64.init)  // [n]
            let (logits, next) = try backend.step(ids: chunk, positions: positions, state: state)  // [n * v] or [v]
            state = next
            if allLogits {
                if try logitsRows(logits.count, tokens: n, vocab: v) != n {
                    throw RGError("every position's logits were asked for, but this bundle's programs return the last position's only")
                }
                out += logits
            } else {
                out = try lastLogits(logits, tokens: n, vocab: v)
            }
            offset += n
        }
        return (out, state)
    }

    /// Generate up to `maxNewTokens` after `prompt`, stopping on EOS (runtime_py/generate.py
    /// `generate`). `resume`: continue a saved state (runs its last token, then `prompt` without
    /// BOS). `saveState`: write the state after the run (its tokens end with the last sampled one).
    public func generate(prompt: String, maxNewTokens: Int, sampling: SamplingConfig = .greedy,
                         saveState: URL? = nil, resume: URL? = nil, onText: ((String) -> Void)? = nil) throws -> GenerationResult {
        if maxNewTokens < 0 { throw RGError("max-new-tokens must be >= 0, got \(maxNewTokens)") }
        let t0 = Date()
        var state: ModelState
        var history: [Int], pending: [Int], start: Int
        var result: GenerationResult
        if let resume {
            let saved = try SavedState.read(resume, identity: try identity, io: bundle.manifest.io)
            state = try backend.state(from: saved.tensors)
            let added = prompt.isEmpty ? [] : tokenizer.encode(prompt)
            history = saved.tokenIds + added
            pending = [saved.tokenIds.last!] + added
            start = saved.position
            result = GenerationResult(promptIds: history, resumedTokens: saved.tokenIds.count)
        } else {
            history = tokenizer.encode(prompt, addBos: true)
            pending = history
            start = 0
            state = try backend.initState()
            result = GenerationResult(promptIds: history)
        }
        var tail = [Int]()
        try decodeLoop(pending: pending, start: start, state: &state, maxNewTokens: maxNewTokens, sampling: sampling,
                       result: &result, tail: &tail, t0: t0, onText: onText)
        result.text = tokenizer.decode(result.newIds)
        if let saveState {
            let saved = SavedState(tokenIds: history + result.newIds + tail, tensors: try backend.stateTensors(state), identity: try identity)
            result.stateBytes = try saved.write(to: saveState, io: bundle.manifest.io)
        }
        return result
    }

    /// Greedy (or sampled) continuation of prompt ids (BOS included), for the self-test.
    public func generate(promptIds: [Int], maxNewTokens: Int, sampling: SamplingConfig = .greedy) throws -> GenerationResult {
        var state = try backend.initState()
        var result = GenerationResult(promptIds: promptIds)
        var tail = [Int]()
        try decodeLoop(pending: promptIds, start: 0, state: &state, maxNewTokens: maxNewTokens, sampling: sampling,
                       result: &result, tail: &tail, t0: Date(), onText: nil)
        result.text = tokenizer.decode(result.newIds)
        return result
    }

    func decodeLoop(pending: [Int], start: Int, state: inout ModelState, maxNewTokens: Int, sampling: SamplingConfig,
                    result: inout GenerationResult, tail: inout [Int], t0: Date, onText: ((String) -> Void)?) throws {
        var sampler = Sampler(sampling)
        let stream = TextStream(tokenizer)
        let eos = bundle.manifest.eosId
        if maxNewTokens == 0 {
            if pending.count > 1 {  // the last token stays unrun: that is what a state file holds
                state = try run(Array(pending.dropLast()), state: state, start: start).1
            }
            result.prefillSeconds = Date().timeIntervalSince(t0)
        } else {
            var (last, next) = try run(pending, state: state, start: start)
            state = next
            result.prefillSeconds = Date().timeIntervalSince(t0)
            var pos = start + pending.count  // position of the next token to run
            let t1 = Date()
            while true {
                if let bad = last.first(where: { !$0.isFinite }) {
                    throw RGError("the model produced \(bad.isNaN ? "NaN" : "Inf") logits at position \(pos - 1); the bundle is broken")
                }
                let token = last.withUnsafeBufferPointer { sampler.sample($0) }
                if token == eos { result.stoppedOnEos = true; tail = [token]; break }
                result.newIds.append(token)
                let piece = stream.push(token)
                if let onText, !piece.isEmpty { onText(piece) }
                if result.newIds.count == maxNewTokens { break }  // a saved state keeps the last token unrun
                (last, next) = try backend.step(ids: [Int64(token)], positions: [Int64(pos)], state: state)
                last = try lastLogits(last, tokens: 1, vocab: bundle.manifest.vocabSize)
                state = next
                pos += 1
            }
            result.decodeSeconds = Date().timeIntervalSince(t1)
        }
        let rest = stream.flush()
        if let onText, !rest.isEmpty { onText(rest) }
    }
}
