// Compile-check stand-ins for the ExecuTorch Android API (org.pytorch:executorch-android), which
// this machine cannot download. Only the signatures the app uses, as the AAR's Java classes expose
// them; nothing here runs. The real AAR replaces these in the Gradle build.
package org.pytorch.executorch

class Tensor private constructor(private val shape: LongArray) {
    val dataAsFloatArray: FloatArray get() = throw UnsupportedOperationException("stub")
    fun shape(): LongArray = shape

    companion object {
        @JvmStatic fun fromBlob(data: LongArray, shape: LongArray): Tensor = Tensor(shape)
        @JvmStatic fun fromBlob(data: FloatArray, shape: LongArray): Tensor = Tensor(shape)
    }
}

class EValue private constructor() {
    fun toTensor(): Tensor = throw UnsupportedOperationException("stub")

    companion object {
        @JvmStatic fun from(tensor: Tensor): EValue = EValue()
    }
}

class Module private constructor() {
    fun execute(methodName: String, vararg inputs: EValue): Array<EValue> = throw UnsupportedOperationException("stub")
    fun destroy() {}

    companion object {
        const val LOAD_MODE_MMAP = 1
        @JvmStatic fun load(modelPath: String): Module = Module()
        @JvmStatic fun load(modelPath: String, loadMode: Int): Module = Module()
    }
}
