import Foundation

/// A user-caused problem (bad bundle, wrong state file, bad option): one line saying what was
/// wrong and what to do. The CLI prints it and exits 2; the app shows it.
public struct RGError: Error, CustomStringConvertible, LocalizedError {
    public let message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
    public var errorDescription: String? { message }
}
