import CRGOrt
import Foundation

/// The state of an ONNX run: one onnxruntime tensor per IOSpec state input. A step's present.*
/// outputs become the next state as they are (no copy); each state is a value, released when
/// no step holds it any more.
final class OnnxState: ModelState {
    let values: [String: UnsafeMutableRawPointer]  // IOSpec input name -> OrtValue*
    init(_ values: [String: UnsafeMutableRawPointer]) { self.values = values }
    deinit { for v in values.values { rg_ort_value_release(v) } }
}

/// A `Backend` over onnxruntime's C API: one session per program file (decode t = 1, prefill t =
/// chunk); programs naming the same file (the default ONNX export: `step.onnx`, its token dim
/// symbolic) share one session, because onnxruntime packs the weights once per session. The
/// library is loaded at run time: `libraryPath`, else $RGMOBILE_ORT_LIB, else the system's
/// libonnxruntime (or the one linked into the app on iOS).
public final class OnnxBackend: Backend {
    public let name = "onnxruntime"
    public let manifest: Manifest
    public let seqLens: [Int]
    public let runtimeVersion: String
    private var byFile: [String: UnsafeMutableRawPointer] = [:]  // program file -> its one session (deinit closes these)
    private var sessions: [Int: UnsafeMutableRawPointer] = [:]  // t -> the session of the program file that runs it
    private let io: IOSpec
    private let pairs: [String: String]  // output name -> the input it feeds

    public init(bundle: RGBundle, threads: Int = 0, spin: Bool = true, libraryPath: String? = nil) throws {
        manifest = bundle.manifest
        io = manifest.io
        guard manifest.format == "onnx" else {
            throw RGError("\(bundle.directory.path): bundle format is '\(manifest.format)', not 'onnx'")
        }
        pairs = Dictionary(uniqueKeysWithValues: io.stateInputs.map { ($0.pair ?? "", $0.name) })
        let lib = libraryPath ?? ProcessInfo.processInfo.environment["RGMOBILE_ORT_LIB"]
        runtimeVersion = try OnnxBackend.load(lib)
        if let need = manifest.runtime_requirements?["onnxruntime"], versionLess(runtimeVersion, need) {
            throw RGError("this bundle needs onnxruntime >= \(need), the loaded library is \(runtimeVersion); point RGMOBILE_ORT_LIB at a newer libonnxruntime")
        }
        do {
            for (pname, prog) in manifest.programs.sorted(by: { $0.key < $1.key }) {
                let s: UnsafeMutableRawPointer
                if let open = byFile[prog.file] {
                    s = open
                } else {
                    var err = [CChar](repeating: 0, count: 1024)
                    let path = bundle.url(prog.file).path
                    guard let opened = rg_ort_session_open(path, Int32(threads), spin ? 1 : 0, &err, err.count) else {
                        throw RGError("\(path): onnxruntime cannot load program '\(pname)': \(String(cString: err))")
                    }
                    s = opened
                    byFile[prog.file] = s
                    let ins = OnnxBackend.names(s, outputs: false), outs = OnnxBackend.names(s, outputs: true)
                    if ins != io.inputs.map(\.name) || outs != io.outputs.map(\.name) {
                        throw RGError("program '\(pname)': graph I/O names differ from the manifest's io spec; re-export the artifact")
                    }
                }
                try OnnxBackend.checkGraph(s, io: io, program: pname, seqLen: prog.seq_len)
                for t in prog.lengths { sessions[t] = s }  // one t, or every t from the program's min_seq_len
            }
        } catch {
            for s in byFile.values { rg_ort_session_close(s) }  // deinit does not run for a failed init
            throw error
        }
        seqLens = sessions.keys.sorted(by: >)
    }

    /// onnxruntime sessions held: one per distinct program file (1 for the default export's `step.onnx`).
    public var sessionCount: Int { byFile.count }

    deinit { for s in byFile.values { rg_ort_session_close(s) } }  // each session once, however many programs share it

    static func load(_ lib: String?) throws -> String {
        var err = [CChar](repeating: 0, count: 1024)
        if rg_ort_load(lib, &err, err.count) != 0 { throw RGError(String(cString: err)) }
        return String(cString: rg_ort_version())
    }

    static func names(_ session: UnsafeMutableRawPointer, outputs: Bool) -> [String] {
        let n = rg_ort_session_names(session, outputs ? 1 : 0, nil, 0)
        var ptrs = [UnsafeMutablePointer<CChar>?](repeating: nil, count: n)
        _ = rg_ort_session_names(session, outputs ? 1 : 0, &ptrs, n)
        defer { rg_ort_free_names(&ptrs, n) }
        return ptrs.map { $0.map { String(cString: $0) } ?? "" }
    }

    /// Elements of a tensor (the product of its dims).
    static func elementCount(_ value: UnsafeMutableRawPointer) -> Int {
        let rank = rg_ort_tensor_shape(value, nil, 0, nil)
        var dims = [Int64](repeating: 0, count: rank)
        _ = rg_ort_tensor_shape(value, &dims, rank, nil)
        return dims.reduce(1) { $0 * Int($1) }
    }

    /// The graph's tensors must be the manifest's io spec (names checked before, in order): element types and
    /// every static dim. A symbolic graph dim accepts anything (one session serving every t); the manifest's
    /// "seq" is this program's t. The Python backend checks the same.
    static func checkGraph(_ s: UnsafeMutableRawPointer, io: IOSpec, program: String, seqLen: Int) throws {
        for (outputs, specs) in [(false, io.inputs), (true, io.outputs)] {
            for (i, spec) in specs.enumerated() {
                var dims = [Int64](repeating: 0, count: 8)
                var type: Int32 = -1
                let rank = rg_ort_session_io_shape(s, outputs ? 1 : 0, i, &dims, dims.count, &type)
                let graph = Array(dims.prefix(min(rank, dims.count)))
                let bound: [Int?] = spec.shape.map {
                    switch $0 {
                    case .fixed(let n): return n
                    case .symbol(let name): return name == "seq" ? seqLen : nil
                    }
                }
                let clash = rank != bound.count || zip(graph, bound).contains { g, m in g >= 0 && m != nil && Int(g) != m }
                if type != elem(spec.dtype) || clash {
                    let shown = bound.enumerated().map { $1.map(String.init) ?? spec.shape[$0].description }
                    let names = [Int32(RG_F32): "float32", Int32(RG_F16): "float16", Int32(RG_I64): "int64"]
                    throw RGError("program '\(program)': graph tensor \(spec.name) is \(names[type] ?? "another type") \(graph), "
                        + "the manifest's io spec says \(spec.dtype) \(shown); re-export the artifact")
                }
            }
        }
    }

    static func elem(_ dtype: String) -> Int32 {
        dtype == "float16" ? Int32(RG_F16) : dtype == "int64" ? Int32(RG_I64) : Int32(RG_F32)
    }

    static func tensor(_ dtype: String, _ shape: [Int], _ bytes: UnsafeRawPointer?) throws -> UnsafeMutableRawPointer {
        var err = [CChar](repeating: 0, count: 512)
        let dims = shape.map(Int64.init)
        guard let v = rg_ort_tensor_new(elem(dtype), dims, dims.count, bytes, &err, err.count) else {
            throw RGError(String(cString: err))
        }
        return v
    }

    public func initState() throws -> ModelState {
        var values = [String: UnsafeMutableRawPointer]()
        for s in io.stateInputs { values[s.name] = try OnnxBackend.tensor(s.dtype, s.concreteShape(), nil) }
        return OnnxState(values)
    }

    public func step(ids: [Int64], positions: [Int64], state: ModelState) throws -> ([Float], ModelState) {
        let t = ids.count
        guard let session = sessions[t] else { throw RGError("onnx bundle runs \(describeLengths(seqLens)) tokens per step, not \(t)") }
        guard let st = state as? OnnxState else { throw RGError("not an onnxruntime state") }
        let idsValue = try ids.withUnsafeBytes { try OnnxBackend.tensor("int64", [1, t], $0.baseAddress) }
        let posValue = try positions.withUnsafeBytes { try OnnxBackend.tensor("int64", [1, t], $0.baseAddress) }
        defer { rg_ort_value_release(idsValue); rg_ort_value_release(posValue) }
        var inputs: [UnsafeMutableRawPointer?] = [idsValue, posValue]
        for s in io.stateInputs { inputs.append(st.values[s.name]) }
        let inNames = io.inputs.map { strdup($0.name) }, outNames = io.outputs.map { strdup($0.name) }
        defer { (inNames + outNames).forEach { free($0) } }
        var outputs = [UnsafeMutableRawPointer?](repeating: nil, count: outNames.count)
        var err = [CChar](repeating: 0, count: 2048)
        let inPtrs = inNames.map { UnsafePointer($0) }, outPtrs = outNames.map { UnsafePointer($0) }
        let rc = rg_ort_run(session, inPtrs, inputs, inputs.count, outPtrs, &outputs, outputs.count, &err, err.count)
        if rc != 0 {
            outputs.forEach { rg_ort_value_release($0) }
            throw RGError("onnxruntime failed running the t=\(t) program: \(String(cString: err))")
        }
        // [1, t, v], or [1, 1, v] when the programs return the last position's logits only
        let logitsPtr = rg_ort_tensor_data(outputs[0]!)!.assumingMemoryBound(to: Float.self)
        let logits = Array(UnsafeBufferPointer(start: logitsPtr, count: OnnxBackend.elementCount(outputs[0]!)))
        rg_ort_value_release(outputs[0])
        var next = [String: UnsafeMutableRawPointer]()
        for (i, o) in io.outputs.enumerated().dropFirst() { next[pairs[o.name]!] = outputs[i]! }
        return (logits, OnnxState(next))
    }

    public func stateTensors(_ state: ModelState) throws -> [String: TensorData] {
        guard let st = state as? OnnxState else { throw RGError("not an onnxruntime state") }
        var out = [String: TensorData]()
        for s in io.stateInputs {
            let count = s.elementCount * TensorData.elementSize(s.dtype)
            let p = rg_ort_tensor_data(st.values[s.name]!)!
            out[s.name] = TensorData(dtype: s.dtype, shape: s.concreteShape(), bytes: Array(UnsafeRawBufferPointer(start: p, count: count)))
        }
        return out
    }

    public func state(from tensors: [String: TensorData]) throws -> ModelState {
        var values = [String: UnsafeMutableRawPointer]()
        for s in io.stateInputs {
            guard let t = tensors[s.name]?.converted(to: s.dtype), t.shape == s.concreteShape() else {
                values.values.forEach { rg_ort_value_release($0) }
                throw RGError("state tensor \(s.name) is missing or mis-shaped")
            }
            values[s.name] = try t.bytes.withUnsafeBytes { try OnnxBackend.tensor(s.dtype, t.shape, $0.baseAddress) }
        }
        return OnnxState(values)
    }
}

/// "1.21.0" < "1.22.0" (numeric, component by component; a suffix like "-dev" is ignored).
func versionLess(_ a: String, _ b: String) -> Bool {
    func parts(_ s: String) -> [Int] {
        s.split(separator: ".").map { Int($0.prefix(while: { $0.isNumber })) ?? 0 }
    }
    let x = parts(a), y = parts(b)
    for i in 0..<max(x.count, y.count) {
        let l = i < x.count ? x[i] : 0, r = i < y.count ? y[i] : 0
        if l != r { return l < r }
    }
    return false
}
