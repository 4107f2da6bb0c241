package dev.rgmobile.engine

import java.io.File
import java.io.IOException
import java.nio.file.Files
import java.security.MessageDigest

/**
 * An opened bundle folder (docs/bundle.md): the manifest parsed, every listed file checked by size
 * then sha256, no symlinks, the tokenizer loaded and matched against the config, selftest.json read.
 */
class Bundle private constructor(
    val dir: File,
    val manifest: Manifest,
    val tokenizer: SentencePieceTokenizer,
    val selftest: Selftest?,
) {
    val name: String get() = manifest.bundleName ?: dir.name

    fun file(relative: String): File = File(dir, relative)

    companion object {
        /** Open and verify [dir]; [verify] = false skips the sha256 pass (sizes are still checked). */
        fun open(dir: File, verify: Boolean = true): Bundle {
            if (!dir.isDirectory) fail("$dir: not a folder; pass the bundle folder written by `rgmobile package`")
            val manifestFile = File(dir, Manifest.NAME)
            if (!manifestFile.isFile) fail("$dir: no ${Manifest.NAME}; not an rgmobile bundle (make one with `rgmobile package`)")
            refuseSymlinks(dir)
            val text = readText(manifestFile)
            val manifest = Manifest.parse(text, manifestFile.path)
            verifyFiles(dir, manifest, verify)
            val tokFile = File(dir, manifest.tokenizerFile)
            val tokenizer = SentencePieceTokenizer.load(tokFile)
            if (tokenizer.vocabSize != manifest.vocabSize) {
                fail("$tokFile: tokenizer has ${tokenizer.vocabSize} pieces, the model's vocab is ${manifest.vocabSize}: " +
                    "wrong tokenizer for this model; re-package the bundle")
            }
            tokenizer.requireSupported(tokFile.path)
            if (tokenizer.bosId != manifest.bosId || tokenizer.eosId != manifest.eosId) {
                fail("$tokFile: tokenizer bos/eos ids (${tokenizer.bosId}/${tokenizer.eosId}) differ from the manifest's " +
                    "(${manifest.bosId}/${manifest.eosId}): wrong tokenizer for this model")
            }
            val selftest = manifest.selftestFile?.let { Selftest.read(File(dir, it)) }
            if (selftest != null && selftest.vocabSize != manifest.vocabSize) {
                fail("${manifest.selftestFile}: written for another model (vocab ${selftest.vocabSize}); re-package the bundle")
            }
            return Bundle(dir, manifest, tokenizer, selftest)
        }

        private fun readText(f: File): String = try {
            f.readText(Charsets.UTF_8)
        } catch (e: IOException) {
            fail("$f: cannot read (${e.message})")
        }

        private fun refuseSymlinks(dir: File) {
            dir.walkTopDown().forEach {
                if (Files.isSymbolicLink(it.toPath())) {
                    fail("$dir: ${it.relativeTo(dir)} is a symlink; a bundle holds plain files only (copy the files)")
                }
            }
        }

        fun verifyFiles(dir: File, manifest: Manifest, checkHashes: Boolean = true) {
            for (f in manifest.files) {
                val p = File(dir, f.path)
                if (!p.isFile) fail("$dir: file ${f.path} listed in ${Manifest.NAME} is missing; re-copy the bundle")
                if (p.length() != f.size) {
                    fail("$dir: ${f.path} is ${p.length()} bytes, ${Manifest.NAME} says ${f.size} (truncated or replaced); re-copy the bundle")
                }
            }
            if (!checkHashes) return
            for (f in manifest.files) {
                val digest = sha256(File(dir, f.path))
                if (digest != f.sha256) {
                    fail("$dir: ${f.path} sha256 ${digest.take(12)}... does not match ${Manifest.NAME} " +
                        "(${f.sha256.take(12)}...): the file was modified or corrupted; re-copy the bundle")
                }
            }
        }

        fun sha256(f: File): String {
            val md = MessageDigest.getInstance("SHA-256")
            f.inputStream().use { s ->
                val buf = ByteArray(1 shl 20)
                while (true) {
                    val n = s.read(buf)
                    if (n < 0) break
                    md.update(buf, 0, n)
                }
            }
            return md.digest().joinToString("") { "%02x".format(it) }
        }
    }
}
