// swift-tools-version:5.9
// RGMobileKit: the iOS engine for rgmobile bundles (docs/bundle.md), its desktop twin
// `rgmobile-cli`, the SwiftUI demo app, and the tests. Open this file in Xcode on a Mac;
// build and test on Linux with scripts/swift.sh (see README.md).
import PackageDescription

let package = Package(
    name: "RGMobile",
    platforms: [.iOS(.v17), .macOS(.v14)],
    products: [
        .library(name: "RGMobileKit", targets: ["RGMobileKit"]),
        .executable(name: "rgmobile-cli", targets: ["rgmobile-cli"]),
        .executable(name: "RGMobileApp", targets: ["RGMobileApp"]),
    ],
    targets: [
        // onnxruntime's C API, loaded at run time (dlopen) so the library is chosen per run
        // (RGMOBILE_ORT_LIB); only onnxruntime_c_api.h is needed at build time.
        .target(
            name: "CRGOrt",
            cSettings: [
                .unsafeFlags(["-I/usr/include/onnxruntime"], .when(platforms: [.linux])),
                .define("_GNU_SOURCE", .when(platforms: [.linux])),
            ],
            linkerSettings: [.linkedLibrary("dl", .when(platforms: [.linux]))]
        ),
        .target(name: "RGMobileKit", dependencies: ["CRGOrt"]),
        .executableTarget(name: "rgmobile-cli", dependencies: ["RGMobileKit"]),
        // The SwiftUI app's sources; on Linux (no SwiftUI) it builds to a stub that says so.
        .executableTarget(name: "RGMobileApp", dependencies: ["RGMobileKit"]),
        .testTarget(name: "RGMobileKitTests", dependencies: ["RGMobileKit"]),
    ]
)
