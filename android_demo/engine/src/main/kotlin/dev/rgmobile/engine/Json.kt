package dev.rgmobile.engine

/**
 * A small JSON reader/writer (objects -> LinkedHashMap, arrays -> List, numbers -> Long or Double).
 * The engine has no JSON dependency so that the same code runs on the JVM and on Android
 * (where org.json is part of the platform and differs from the desktop artifact).
 */
object Json {
    fun parse(text: String, where: String): Any? {
        val p = Parser(text, where)
        p.ws()
        val v = p.value()
        p.ws()
        if (p.i != text.length) p.err("trailing characters")
        return v
    }

    fun write(value: Any?): String = StringBuilder().also { writeTo(it, value) }.toString()

    private fun writeTo(sb: StringBuilder, v: Any?) {
        when (v) {
            null -> sb.append("null")
            is String -> quote(sb, v)
            is Boolean -> sb.append(v)
            is Int, is Long -> sb.append(v)
            is Float, is Double -> {
                val d = (v as Number).toDouble()
                require(d.isFinite()) { "JSON cannot hold $d" }
                sb.append(d)
            }
            is Map<*, *> -> {
                sb.append('{')
                var first = true
                for ((k, x) in v) {
                    if (!first) sb.append(',')
                    first = false
                    quote(sb, k.toString()); sb.append(':'); writeTo(sb, x)
                }
                sb.append('}')
            }
            is Iterable<*> -> {
                sb.append('[')
                var first = true
                for (x in v) { if (!first) sb.append(','); first = false; writeTo(sb, x) }
                sb.append(']')
            }
            is IntArray -> writeTo(sb, v.toList())
            is LongArray -> writeTo(sb, v.toList())
            else -> throw IllegalArgumentException("cannot write ${v::class} as JSON")
        }
    }

    private fun quote(sb: StringBuilder, s: String) {
        sb.append('"')
        for (c in s) {
            when {
                c == '"' -> sb.append("\\\"")
                c == '\\' -> sb.append("\\\\")
                c == '\n' -> sb.append("\\n")
                c == '\r' -> sb.append("\\r")
                c == '\t' -> sb.append("\\t")
                c < ' ' -> sb.append(String.format("\\u%04x", c.code))
                else -> sb.append(c)
            }
        }
        sb.append('"')
    }

    private class Parser(val s: String, val where: String) {
        var i = 0

        fun err(what: String): Nothing = fail("$where: malformed JSON ($what at character $i)")

        fun ws() { while (i < s.length && s[i].isWhitespace()) i++ }

        fun value(): Any? {
            if (i >= s.length) err("unexpected end")
            return when (val c = s[i]) {
                '{' -> obj()
                '[' -> arr()
                '"' -> str()
                't' -> lit("true", true)
                'f' -> lit("false", false)
                'n' -> lit("null", null)
                else -> if (c == '-' || c.isDigit()) num() else err("unexpected '$c'")
            }
        }

        private fun lit(word: String, v: Any?): Any? {
            if (!s.startsWith(word, i)) err("bad literal")
            i += word.length
            return v
        }

        private fun obj(): Map<String, Any?> {
            val m = LinkedHashMap<String, Any?>()
            i++; ws()
            if (i < s.length && s[i] == '}') { i++; return m }
            while (true) {
                ws()
                if (i >= s.length || s[i] != '"') err("expected a key")
                val k = str()
                ws()
                if (i >= s.length || s[i] != ':') err("expected ':'")
                i++; ws()
                m[k] = value()
                ws()
                if (i >= s.length) err("unexpected end")
                when (s[i]) {
                    ',' -> i++
                    '}' -> { i++; return m }
                    else -> err("expected ',' or '}'")
                }
            }
        }

        private fun arr(): List<Any?> {
            val a = ArrayList<Any?>()
            i++; ws()
            if (i < s.length && s[i] == ']') { i++; return a }
            while (true) {
                ws(); a.add(value()); ws()
                if (i >= s.length) err("unexpected end")
                when (s[i]) {
                    ',' -> i++
                    ']' -> { i++; return a }
                    else -> err("expected ',' or ']'")
                }
            }
        }

        private fun str(): String {
            val sb = StringBuilder()
            i++
            while (true) {
                if (i >= s.length) err("unterminated string")
                val c = s[i++]
                when {
                    c == '"' -> return sb.toString()
                    c == '\\' -> {
                        if (i >= s.length) err("unterminated escape")
                        when (val e = s[i++]) {
                            '"' -> sb.append('"'); '\\' -> sb.append('\\'); '/' -> sb.append('/')
                            'b' -> sb.append('\b'); 'f' -> sb.append('\u000c'); 'n' -> sb.append('\n')
                            'r' -> sb.append('\r'); 't' -> sb.append('\t')
                            'u' -> {
                                if (i + 4 > s.length) err("bad \\u escape")
                                val code = s.substring(i, i + 4).toIntOrNull(16) ?: err("bad \\u escape")
                                sb.append(code.toChar()); i += 4
                            }
                            else -> err("bad escape '\\$e'")
                        }
                    }
                    c < ' ' -> err("control character in string")
                    else -> sb.append(c)
                }
            }
        }

        private fun num(): Any {
            val start = i
            if (s[i] == '-') i++
            while (i < s.length && (s[i].isDigit() || s[i] in ".eE+-")) i++
            val t = s.substring(start, i)
            if (t.any { it in ".eE" }) return t.toDoubleOrNull() ?: err("bad number '$t'")
            return t.toLongOrNull() ?: t.toDoubleOrNull() ?: err("bad number '$t'")
        }
    }
}

/** Typed access to parsed JSON with errors that name the field. */
internal class JObj(val map: Map<String, Any?>, val where: String) {
    fun has(key: String) = map.containsKey(key) && map[key] != null
    fun str(key: String): String = map[key] as? String ?: fail("$where: field '$key' must be a string")
    fun strOrNull(key: String): String? = map[key] as? String
    fun long(key: String): Long = (map[key] as? Long) ?: fail("$where: field '$key' must be an integer")
    fun int(key: String): Int = long(key).toInt()
    fun double(key: String): Double = (map[key] as? Number)?.toDouble() ?: fail("$where: field '$key' must be a number")
    fun obj(key: String): JObj = JObj(asMap(map[key], "$where: field '$key' must be an object"), "$where.$key")
    fun objOrNull(key: String): JObj? = (map[key] as? Map<*, *>)?.let { obj(key) }
    fun list(key: String): List<Any?> = map[key] as? List<Any?> ?: fail("$where: field '$key' must be a list")
    fun objs(key: String): List<JObj> = list(key).mapIndexed { n, x -> JObj(asMap(x, "$where: $key[$n] must be an object"), "$where.$key[$n]") }
    fun ints(key: String): IntArray = list(key).map { (it as? Long)?.toInt() ?: fail("$where: $key must hold integers") }.toIntArray()
    fun doubles(key: String): DoubleArray = list(key).map { (it as? Number)?.toDouble() ?: fail("$where: $key must hold numbers") }.toDoubleArray()

    companion object {
        @Suppress("UNCHECKED_CAST")
        fun asMap(x: Any?, message: String): Map<String, Any?> = x as? Map<String, Any?> ?: fail(message)
    }
}
