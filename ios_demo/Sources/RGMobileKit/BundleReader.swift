import Foundation
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// An opened bundle (docs/bundle.md "manifest.json"): the parsed manifest, with every listed
/// file checked (no symlinks, size first, then sha256).
public struct RGBundle {
    public let directory: URL
    public let manifest: Manifest

    /// Open `directory`: parse manifest.json (refuses a newer schema), refuse symlinks, check sizes
    /// and (when `verify`) sha256 of every listed file.
    public init(directory: URL, verify: Bool = true) throws {
        self.directory = directory
        let url = directory.appendingPathComponent(Manifest.fileName)
        guard FileManager.default.fileExists(atPath: url.path) else {
            throw RGError("\(directory.path): no \(Manifest.fileName); not an rgmobile bundle (make one with `rgmobile package`)")
        }
        try RGBundle.refuseSymlink(url, in: directory)
        let data: Data
        do { data = try Data(contentsOf: url) } catch { throw RGError("\(url.path): cannot read it") }
        manifest = try Manifest.parse(data, where: url.path)
        try checkFiles(hash: verify)
    }

    public func url(_ relative: String) -> URL { directory.appendingPathComponent(relative) }

    func checkFiles(hash: Bool) throws {
        let root = directory.path
        for f in manifest.files {
            let u = url(f.path)
            try RGBundle.refuseSymlink(u, in: directory)
            var st = stat()
            guard lstat(u.path, &st) == 0, (st.st_mode & S_IFMT) == S_IFREG else {
                throw RGError("\(root): file \(f.path) listed in manifest.json is missing; re-copy the bundle")
            }
            if Int(st.st_size) != f.size {
                throw RGError("\(root): \(f.path) is \(st.st_size) bytes, manifest.json says \(f.size) (truncated or replaced); re-copy the bundle")
            }
        }
        guard hash else { return }
        for f in manifest.files {
            let digest = try SHA256.hexOfFile(url(f.path))
            if digest != f.sha256.lowercased() {
                throw RGError("\(root): \(f.path) sha256 \(digest.prefix(12))... does not match manifest.json (\(f.sha256.prefix(12))...): the file was modified or corrupted; re-copy the bundle")
            }
        }
    }

    /// Refuse `url` when it or any folder between the bundle root and it is a symlink.
    static func refuseSymlink(_ url: URL, in root: URL) throws {
        var path = url.path
        let top = root.path
        while path.count > top.count {
            var st = stat()
            if lstat(path, &st) == 0 && (st.st_mode & S_IFMT) == S_IFLNK {
                throw RGError("\(top): \(path.dropFirst(top.count + 1)) is a symlink; a bundle must hold real files (copy them in)")
            }
            path = (path as NSString).deletingLastPathComponent
        }
    }
}
