package dev.rgmobile.engine

/**
 * The one error type of the engine for problems a user can cause (bad bundle, wrong file,
 * bad option). The message is one line: what was wrong and what to do.
 */
class RgMobileException(message: String, cause: Throwable? = null) : Exception(message, cause)

internal fun fail(message: String): Nothing = throw RgMobileException(message)
