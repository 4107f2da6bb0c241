// The SwiftUI demo app. On a platform without SwiftUI (Linux) this target builds to a stub.
#if canImport(SwiftUI)
import SwiftUI

@main
struct RGMobileApp: App {
    var body: some Scene {
        WindowGroup { ContentView() }
    }
}
#else
@main
enum RGMobileAppStub {
    static func main() {
        print("RGMobileApp needs SwiftUI (iOS/macOS); on this platform use rgmobile-cli")
    }
}
#endif
