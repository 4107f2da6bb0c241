// Plain Kotlin/JVM: no Android imports, so the same code runs in the app and on the desktop
// (engine/pom.xml builds it with Maven where there is no Gradle).
plugins {
    alias(libs.plugins.kotlin.jvm)
    `java-library`
}

java {
    toolchain { languageVersion.set(JavaLanguageVersion.of(17)) }
}

dependencies {
    // The ai.onnxruntime API: the app supplies onnxruntime-android, desktop tests the JVM build.
    compileOnly(libs.onnxruntime.jvm)
    testImplementation(libs.onnxruntime.jvm)
    testImplementation(libs.junit.jupiter)
    testRuntimeOnly(libs.junit.launcher)
}

tasks.test {
    useJUnitPlatform()
    // Bundle tests read RGMOBILE_BUNDLE_FP32 / RGMOBILE_BUNDLE_INT4 / RGMOBILE_BUNDLE_PER_LENGTH (or RGMOBILE_UNIT_ONLY=1).
    listOf("RGMOBILE_BUNDLE_FP32", "RGMOBILE_BUNDLE_INT4", "RGMOBILE_BUNDLE_PER_LENGTH", "RGMOBILE_UNIT_ONLY").forEach { name ->
        System.getenv(name)?.let { environment(name, it) }
    }
}
