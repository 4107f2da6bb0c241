package dev.rgmobile.engine

/** temperature 0 = greedy (argmax); topK 0 and topP 1.0 disable those filters; seed null = from the clock. */
data class SamplingConfig(val temperature: Double = 0.0, val topK: Int = 0, val topP: Double = 1.0, val seed: Long? = null) {
    init {
        if (temperature < 0) fail("temperature must be >= 0, got $temperature")
        if (topK < 0) fail("top-k must be >= 0, got $topK")
        if (!(topP > 0.0 && topP <= 1.0)) fail("top-p must be in (0, 1], got $topP")
    }
}

/**
 * Next-token sampler over logits [v] (runtime_py/sampling.py is the reference for the filters).
 * The random stream is SplitMix64, so a seed gives the same tokens on every JVM and on Android;
 * it does not reproduce numpy's generator.
 */
class Sampler(val config: SamplingConfig) {
    private var rngState: Long = config.seed ?: System.nanoTime()

    /** A uniform double in [0, 1). */
    fun nextDouble(): Double {
        rngState += -0x61c8864680b583ebL // 0x9E3779B97F4A7C15
        var z = rngState
        z = (z xor (z ushr 30)) * -0x40a7b892e31b1a47L // 0xBF58476D1CE4E5B9
        z = (z xor (z ushr 27)) * -0x6b2fb644ecceee15L // 0x94D049BB133111EB
        z = z xor (z ushr 31)
        return (z ushr 11).toDouble() * (1.0 / (1L shl 53))
    }

    fun sample(logits: FloatArray, offset: Int = 0, vocab: Int = logits.size - offset): Int {
        if (config.temperature == 0.0) return argmax(logits, offset, vocab)
        val z = DoubleArray(vocab) { logits[offset + it].toDouble() / config.temperature }
        if (config.topK in 1 until vocab) {
            val kth = z.sortedArrayDescending()[config.topK - 1]
            for (i in z.indices) if (z[i] < kth) z[i] = Double.NEGATIVE_INFINITY // ties with the k-th stay in
        }
        val max = z.max()
        val p = DoubleArray(vocab) { Math.exp(z[it] - max) }
        var total = p.sum()
        for (i in p.indices) p[i] /= total
        if (config.topP < 1.0) {
            val order = p.indices.sortedByDescending { p[it] } // stable: equal p keep id order
            var cum = 0.0
            val keep = BooleanArray(vocab)
            for (i in order) {
                if (cum < config.topP) keep[i] = true // the smallest prefix whose mass reaches top_p
                cum += p[i]
            }
            for (i in p.indices) if (!keep[i]) p[i] = 0.0
            total = p.sum()
            for (i in p.indices) p[i] /= total
        }
        val u = nextDouble()
        var acc = 0.0
        var last = -1
        for (i in p.indices) {
            if (p[i] <= 0.0) continue
            acc += p[i]
            last = i
            if (u < acc) return i
        }
        return last // rounding left u just above the total mass
    }

    companion object {
        /** Greedy: the largest logit, the lowest id on ties. */
        fun argmax(logits: FloatArray, offset: Int = 0, vocab: Int = logits.size - offset): Int {
            var best = 0
            var bestV = logits[offset]
            for (i in 1 until vocab) {
                val v = logits[offset + i]
                if (v > bestV) { bestV = v; best = i }
            }
            return best
        }
    }
}
