// rgmobile-cli: the desktop twin of the iOS app (same engine, same bundle).
//
//   rgmobile-cli BUNDLE_DIR --prompt TEXT --max-new-tokens N [--temperature T --top-k K --top-p P
//       --seed S] [--threads N] [--no-spin] [--ids] [--selftest] [--save-state F --resume F] [--no-verify]
//
// Prints the generated text as it streams (or, with --ids, the generated ids as one JSON line);
// tok/s goes to stderr. A bad bundle, state file or option exits 2 with one clear line.
import Foundation
import RGMobileKit

struct Options {
    var bundle = ""
    var prompt = ""
    var maxNewTokens = 64
    var temperature = 0.0, topK = 0, topP = 1.0
    var seed: UInt64?
    var threads = 0
    var spin = true
    var ids = false, selftest = false, verify = true
    var saveState: String?, resume: String?
}

func parse(_ args: [String]) throws -> Options {
    var o = Options()
    var i = 0
    func value(_ flag: String) throws -> String {
        i += 1
        guard i < args.count else { throw RGError("\(flag) needs a value") }
        return args[i]
    }
    func number<T: LosslessStringConvertible>(_ flag: String, _ type: T.Type) throws -> T {
        let s = try value(flag)
        guard let v = T(s) else { throw RGError("\(flag): '\(s)' is not a valid \(T.self)") }
        return v
    }
    while i < args.count {
        let a = args[i]
        switch a {
        case "--prompt": o.prompt = try value(a)
        case "--max-new-tokens": o.maxNewTokens = try number(a, Int.self)
        case "--temperature": o.temperature = try number(a, Double.self)
        case "--top-k": o.topK = try number(a, Int.self)
        case "--top-p": o.topP = try number(a, Double.self)
        case "--seed": o.seed = try number(a, UInt64.self)
        case "--threads": o.threads = try number(a, Int.self)
        case "--no-spin": o.spin = false
        case "--ids": o.ids = true
        case "--selftest": o.selftest = true
        case "--no-verify": o.verify = false
        case "--save-state": o.saveState = try value(a)
        case "--resume": o.resume = try value(a)
        case "-h", "--help":
            print("usage: rgmobile-cli BUNDLE_DIR --prompt TEXT --max-new-tokens N [--temperature T --top-k K --top-p P --seed S] [--threads N] [--no-spin] [--ids] [--selftest] [--save-state F --resume F] [--no-verify]")
            exit(0)
        default:
            if a.hasPrefix("-") { throw RGError("unknown option \(a) (see --help)") }
            if !o.bundle.isEmpty { throw RGError("one bundle folder only (got '\(o.bundle)' and '\(a)')") }
            o.bundle = a
        }
        i += 1
    }
    if o.bundle.isEmpty { throw RGError("missing BUNDLE_DIR (see --help)") }
    return o
}

func err(_ s: String) { FileHandle.standardError.write((s + "\n").data(using: .utf8)!) }

do {
    let o = try parse(Array(CommandLine.arguments.dropFirst()))
    let sampling = try SamplingConfig(temperature: o.temperature, topK: o.topK, topP: o.topP, seed: o.seed)
    let engine = try Engine.open(URL(fileURLWithPath: o.bundle), threads: o.threads, spin: o.spin, verify: o.verify)
    if o.selftest {
        let report = try engine.selfTest(progress: { err("self-test: \($0)") })
        print(report.summary)
        exit(report.passed ? 0 : 1)
    }
    let stream: ((String) -> Void)? = o.ids ? nil : { piece in
        FileHandle.standardOutput.write(piece.data(using: .utf8)!)
    }
    let r = try engine.generate(prompt: o.prompt, maxNewTokens: o.maxNewTokens, sampling: sampling,
                                saveState: o.saveState.map { URL(fileURLWithPath: $0) },
                                resume: o.resume.map { URL(fileURLWithPath: $0) }, onText: stream)
    if o.ids {
        print("[" + r.newIds.map(String.init).joined(separator: ", ") + "]")
    } else {
        print("")
    }
    let prefilled = r.promptIds.count - r.resumedTokens + (r.resumedTokens > 0 ? 1 : 0)
    let stateNote = r.stateBytes > 0 ? ", state \(r.stateBytes) bytes" : ""
    err("\(r.newIds.count) tokens, \(String(format: "%.1f", r.decodeTokensPerSecond)) tok/s decode, "
        + "prefill \(prefilled) tokens in \(String(format: "%.2f", r.prefillSeconds)) s\(stateNote)")
} catch let e as RGError {
    err("error: \(e.message)")
    exit(2)
} catch {
    err("error: \(error)")
    exit(1)
}
