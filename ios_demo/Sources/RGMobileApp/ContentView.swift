// The demo app's one screen: pick a bundle, type a prompt, watch the text stream in, run the
// self-test, save and restore the conversation state. Everything model-related is RGMobileKit.
#if canImport(SwiftUI)
import RGMobileKit
import SwiftUI
import UniformTypeIdentifiers

@MainActor
final class AppModel: ObservableObject {
    @Published var bundles: [URL] = []
    @Published var selected: URL?
    @Published var prompt = "Once upon a time"
    @Published var output = ""
    @Published var status = "Pick a bundle"
    @Published var busy = false
    @Published var maxNewTokens = 128.0
    /// onnxruntime's idle threads spin-wait by default; off, a decode keeps more of its speed when
    /// another app holds a core (ONNX bundles only; applies when a bundle is opened)
    @Published var spin = true
    private var engine: Engine?
    private var hasState = false

    var documents: URL { FileManager.default.urls(for: .documentDirectory, in: .userDomainMask)[0] }
    var stateURL: URL { documents.appendingPathComponent("\(selected?.lastPathComponent ?? "bundle").rgstate") }

    /// Bundles are folders with a manifest.json in Documents (copy them in with Finder / Files) or inside the app.
    func scan() {
        var found = [URL]()
        for root in [documents, Bundle.main.resourceURL].compactMap({ $0 }) {
            let items = (try? FileManager.default.contentsOfDirectory(at: root, includingPropertiesForKeys: nil)) ?? []
            found += items.filter { FileManager.default.fileExists(atPath: $0.appendingPathComponent("manifest.json").path) }
        }
        bundles = found.sorted { $0.lastPathComponent < $1.lastPathComponent }
    }

    func open(_ url: URL) {
        selected = url
        engine = nil
        hasState = FileManager.default.fileExists(atPath: stateURL.path)
        let spin = spin
        work("Opening \(url.lastPathComponent)…") { [weak self] in
            let e = try Engine.open(url, spin: spin)
            await MainActor.run { self?.engine = e }
            return "\(url.lastPathComponent): \(e.bundle.manifest.format) \(e.bundle.manifest.precision), ready"
        }
    }

    func generate(resume: Bool) {
        guard let engine else { return }
        output = ""
        let prompt = prompt, n = Int(maxNewTokens), state = stateURL
        work("Generating…") { [weak self] in
            let r = try engine.generate(prompt: prompt, maxNewTokens: n, saveState: state, resume: resume ? state : nil) { piece in
                Task { @MainActor in self?.output += piece }
            }
            await MainActor.run { self?.hasState = true }
            return String(format: "%d tokens, %.1f tok/s (state saved, %d bytes)", r.newIds.count, r.decodeTokensPerSecond, r.stateBytes)
        }
    }

    func selfTest() {
        guard let engine else { return }
        work("Running the self-test…") { try engine.selfTest().summary }
    }

    var canResume: Bool { hasState && engine != nil && !busy }
    var ready: Bool { engine != nil && !busy }

    private func work(_ message: String, _ job: @escaping () async throws -> String) {
        busy = true
        status = message
        Task.detached {
            let text: String
            do { text = try await job() } catch { text = "Error: \(error.localizedDescription)" }
            await MainActor.run { self.status = text; self.busy = false }
        }
    }
}

struct ContentView: View {
    @StateObject private var model = AppModel()
    @State private var importing = false

    var body: some View {
        NavigationStack {
            Form {
                Section("Bundle") {
                    Picker("Bundle", selection: Binding(get: { model.selected }, set: { if let u = $0 { model.open(u) } })) {
                        Text("None").tag(URL?.none)
                        ForEach(model.bundles, id: \.self) { Text($0.lastPathComponent).tag(URL?.some($0)) }
                    }
                    Button("Open from Files…") { importing = true }
                    Toggle("Spin-wait threads (onnx)", isOn: $model.spin)
                        .onChange(of: model.spin) { if let u = model.selected { model.open(u) } }
                        .disabled(model.busy)
                }
                Section("Prompt") {
                    TextField("Prompt", text: $model.prompt, axis: .vertical)
                    Stepper("Max new tokens: \(Int(model.maxNewTokens))", value: $model.maxNewTokens, in: 1...1024, step: 32)
                    HStack {
                        Button("Generate") { model.generate(resume: false) }.disabled(!model.ready)
                        Spacer()
                        Button("Continue saved") { model.generate(resume: true) }.disabled(!model.canResume)
                    }
                    Button("Self-test") { model.selfTest() }.disabled(!model.ready)
                }
                Section("Output") {
                    Text(model.output).textSelection(.enabled).font(.body.monospaced())
                    Text(model.status).font(.footnote).foregroundStyle(.secondary)
                }
            }
            .navigationTitle("RGMobile")
            .onAppear { model.scan() }
            .fileImporter(isPresented: $importing, allowedContentTypes: [.folder]) { result in
                if case .success(let url) = result, url.startAccessingSecurityScopedResource() { model.open(url) }
            }
        }
    }
}
#endif
