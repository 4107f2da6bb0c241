// Core ML backend (Apple platforms only; it cannot be compiled or run on Linux, where this file
// is empty). Follows runtime_py/coreml_backend.py:
//  - one MLModel per program: an iOS 18 multifunction package (`programs[*].entry` = "decode" /
//    "prefill" / "prefill_<t>" through MLModelConfiguration.functionName) or iOS 17's two packages (no entry);
//  - feature names and dtypes from the manifest's `format_details.features` (IOSpec name ->
//    {"name", "kind": input | output | state, "dtype"}): input_ids/position_ids are int32;
//  - explicit state: MLMultiArrays, the step's outputs become the next step's inputs;
//  - internal state (`kind` "state", the KV ring buffers, fp16): an MLState kept in the state
//    object and updated in place by predictions (copied only when the other program runs next).
#if canImport(CoreML)
import CoreML
import Foundation

final class CoreMLState: ModelState {
    var arrays: [String: MLMultiArray]  // explicit state, IOSpec input name -> array
    var mlState: AnyObject?  // MLState (iOS 18) holding the internal KV buffers
    var owner: Int  // seq_len of the model the MLState belongs to
    init(arrays: [String: MLMultiArray], mlState: AnyObject?, owner: Int) {
        self.arrays = arrays; self.mlState = mlState; self.owner = owner
    }
}

public final class CoreMLBackend: Backend {
    public let name = "coreml"
    public let manifest: Manifest
    public let seqLens: [Int]
    private var models: [Int: MLModel] = [:]
    private let features: [String: (name: String, kind: String, dtype: String)]
    private let explicit: [TensorSpec]
    private let internalSpecs: [TensorSpec]

    public init(bundle: RGBundle, computeUnits: MLComputeUnits = .all) throws {
        manifest = bundle.manifest
        guard manifest.format == "coreml" else { throw RGError("bundle format is '\(manifest.format)', not 'coreml'") }
        var f = [String: (name: String, kind: String, dtype: String)]()
        if case .object(let map)? = manifest.format_details["features"] {
            for (k, v) in map {
                guard let n = v["name"]?.stringValue, let kind = v["kind"]?.stringValue, let dt = v["dtype"]?.stringValue else { continue }
                f[k] = (name: n, kind: kind, dtype: dt)
            }
        }
        features = f
        for s in manifest.io.inputs + manifest.io.outputs where f[s.name] == nil {
            throw RGError("manifest.json: format_details.features has no entry for \(s.name); re-export the artifact")
        }
        explicit = manifest.io.stateInputs.filter { f[$0.name]?.kind == "input" }
        internalSpecs = manifest.io.stateInputs.filter { f[$0.name]?.kind == "state" }
        var compiled = [String: URL]()  // one compile per package file
        for (pname, prog) in manifest.programs {
            let cfg = MLModelConfiguration()
            cfg.computeUnits = computeUnits
            if let entry = prog.entry {
                guard #available(iOS 18.0, macOS 15.0, *) else {
                    throw RGError("this bundle is a multifunction Core ML package; it needs iOS 18")
                }
                cfg.functionName = entry
            }
            do {
                let url = try compiled[prog.file] ?? MLModel.compileModel(at: bundle.url(prog.file))
                compiled[prog.file] = url
                models[prog.seq_len] = try MLModel(contentsOf: url, configuration: cfg)
            } catch {
                throw RGError("\(prog.file): Core ML cannot load program '\(pname)': \(error.localizedDescription)")
            }
        }
        seqLens = models.keys.sorted(by: >)
    }

    private func array(_ spec: TensorSpec, dtype: String, shape: [Int]? = nil) throws -> MLMultiArray {
        let type: MLMultiArrayDataType = dtype == "int32" ? .int32 : dtype == "float16" ? .float16 : .float32
        let a = try MLMultiArray(shape: (shape ?? spec.concreteShape()).map { NSNumber(value: $0) }, dataType: type)
        memset(a.dataPointer, 0, a.count * (type == .float16 ? 2 : 4))
        return a
    }

    public func initState() throws -> ModelState {
        var arrays = [String: MLMultiArray]()
        for s in explicit { arrays[s.name] = try array(s, dtype: features[s.name]!.dtype) }
        let st = CoreMLState(arrays: arrays, mlState: nil, owner: seqLens.last ?? 1)
        if !internalSpecs.isEmpty, #available(iOS 18.0, macOS 15.0, *) {
            st.mlState = models[st.owner]!.makeState()  // Core ML states start at zero
        }
        return st
    }

    public func step(ids: [Int64], positions: [Int64], state: ModelState) throws -> ([Float], ModelState) {
        let t = ids.count
        guard let model = models[t], let st = state as? CoreMLState else {
            throw RGError("coreml bundle runs \(seqLens) tokens per step, not \(t)")
        }
        var feed = [String: MLFeatureValue]()
        for (key, values) in [("input_ids", ids), ("position_ids", positions)] {
            let a = try MLMultiArray(shape: [1, NSNumber(value: t)], dataType: .int32)
            for (i, v) in values.enumerated() { a[i] = NSNumber(value: Int32(v)) }
            feed[features[key]!.name] = MLFeatureValue(multiArray: a)
        }
        for s in explicit { feed[features[s.name]!.name] = MLFeatureValue(multiArray: st.arrays[s.name]!) }
        let provider = try MLDictionaryFeatureProvider(dictionary: feed)
        let out: MLFeatureProvider
        var nextState: AnyObject? = nil
        if !internalSpecs.isEmpty, #available(iOS 18.0, macOS 15.0, *) {
            let ml = try movedState(st, to: t, model: model)
            out = try model.prediction(from: provider, using: ml)
            nextState = ml  // updated in place: the old ModelState must not be reused after this step
        } else {
            out = try model.prediction(from: provider)
        }
        guard let logitsArray = out.featureValue(for: features["logits"]!.name)?.multiArrayValue else {
            throw RGError("Core ML returned no logits")
        }
        var logits = [Float](repeating: 0, count: logitsArray.count)  // [t, v], or [1, v]: the last position's only
        for i in 0..<logitsArray.count { logits[i] = logitsArray[i].floatValue }
        var arrays = [String: MLMultiArray]()
        for s in explicit {
            guard let a = out.featureValue(for: features[s.pair!]!.name)?.multiArrayValue else {
                throw RGError("Core ML returned no \(s.pair!)")
            }
            arrays[s.name] = a
        }
        return (logits, CoreMLState(arrays: arrays, mlState: nextState, owner: t))
    }

    /// The MLState for `model`: the one held when it belongs to that program, else a copy of its KV buffers.
    @available(iOS 18.0, macOS 15.0, *)
    private func movedState(_ st: CoreMLState, to t: Int, model: MLModel) throws -> MLState {
        if st.owner == t, let ml = st.mlState as? MLState { return ml }
        let fresh = model.makeState()
        if let old = st.mlState as? MLState {
            for s in internalSpecs {
                let name = features[s.name]!.name
                old.withMultiArray(for: name) { src in
                    fresh.withMultiArray(for: name) { dst in memcpy(dst.dataPointer, src.dataPointer, src.count * 2) }
                }
            }
        }
        return fresh
    }

    public func stateTensors(_ state: ModelState) throws -> [String: TensorData] {
        guard let st = state as? CoreMLState else { throw RGError("not a Core ML state") }
        var out = [String: TensorData]()
        for s in explicit {
            let a = st.arrays[s.name]!
            let dtype = features[s.name]!.dtype == "float16" ? "float16" : "float32"
            let bytes = Array(UnsafeRawBufferPointer(start: a.dataPointer, count: a.count * TensorData.elementSize(dtype)))
            out[s.name] = TensorData(dtype: dtype, shape: s.concreteShape(), bytes: bytes).converted(to: s.dtype)
        }
        if #available(iOS 18.0, macOS 15.0, *), let ml = st.mlState as? MLState {
            for s in internalSpecs {
                ml.withMultiArray(for: features[s.name]!.name) { a in
                    let bytes = Array(UnsafeRawBufferPointer(start: a.dataPointer, count: a.count * 2))
                    out[s.name] = TensorData(dtype: "float16", shape: s.concreteShape(), bytes: bytes).converted(to: s.dtype)
                }
            }
        }
        return out
    }

    public func state(from tensors: [String: TensorData]) throws -> ModelState {
        guard let st = try initState() as? CoreMLState else { throw RGError("not a Core ML state") }
        for s in explicit {
            let dtype = features[s.name]!.dtype == "float16" ? "float16" : "float32"
            guard let t = tensors[s.name]?.converted(to: dtype) else { throw RGError("state tensor \(s.name) is missing") }
            t.bytes.withUnsafeBytes { _ = memcpy(st.arrays[s.name]!.dataPointer, $0.baseAddress!, $0.count) }
        }
        if #available(iOS 18.0, macOS 15.0, *), let ml = st.mlState as? MLState {
            for s in internalSpecs {
                guard let t = tensors[s.name]?.converted(to: "float16") else { throw RGError("state tensor \(s.name) is missing") }
                ml.withMultiArray(for: features[s.name]!.name) { a in
                    t.bytes.withUnsafeBytes { _ = memcpy(a.dataPointer, $0.baseAddress!, $0.count) }
                }
            }
        }
        return st
    }
}
#endif
