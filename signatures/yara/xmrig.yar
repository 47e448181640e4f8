/*
 * XMRig family. Authored by minerwatch from strings observed in XMRig 6.26.0 builds and its
 * source (xmrig/xmrig b2ca724, GPL-3.0); the strings are facts, the rules are ours.
 *
 * meta keys (all rules in the bundle): description, source, weight (1-100),
 * category (miner | miner-suspect | packer), tier (stable | incubating | sandbox),
 * scope (file | memory | any: what the rule is written for).
 *
 * Every active rule fires only on an ELF file or in process memory, never on text: rule
 * files, documentation and test sources that quote these strings must not look like miners.
 * Process memory is told apart by the external mw_memory_scan (true only when minerwatch
 * scans regions read from /proc/PID/mem) or, in a whole-process YARA scan (pid=), by an
 * unmapped offset 0 (uint32(0) undefined). File rules require "not mw_memory_scan", so an
 * executable's mapped ELF header never makes a memory scan look like a file scan.
 */

rule MW_XMRig_ELF
{
    meta:
        description = "XMRig miner executable: ELF file with several XMRig-only strings"
        source = "xmrig-observed (strings of an unpacked XMRig 6.26.0 build); xmrig-src DonateStrategy.cpp, Platform_unix.cpp"
        weight = 100
        category = "miner"
        tier = "stable"
        scope = "file"

    strings:
        $name = "XMRig" fullword
        $donate_v2 = "donate.v2.xmrig.com"
        $donate_ssl = "donate.ssl.xmrig.com"
        $agent_fmt = "%s/%s (Linux "
        $agent_old = "XMRig/%s libuv/%s"
        $opt_donate = "--donate-level="
        $opt_rxmode = "--randomx-mode="
        $algo_cnr = "cryptonight/r"
        $config = ".config/xmrig.json"
        $env_exe = "XMRIG_EXE"
        $wizard = "xmrig.com/wizard"

    condition:
        not mw_memory_scan and uint32(0) == 0x464c457f and 3 of them
}

rule MW_XMRig_Memory
{
    meta:
        description = "XMRig miner in process memory (also catches packed builds once unpacked); process scans only (MW_XMRig_ELF covers files)"
        source = "xmrig-observed (these strings appear in the memory of a running UPX-packed XMRig 6.26.0)"
        weight = 100
        category = "miner"
        tier = "stable"
        scope = "memory"

    strings:
        $donate_v2 = "donate.v2.xmrig.com"
        $donate_ssl = "donate.ssl.xmrig.com"
        $agent_fmt = "%s/%s (Linux "
        $agent_old = "XMRig/%s libuv/%s"
        $opt_donate = "--donate-level="
        $opt_rxmode = "--randomx-mode="
        $algo_cnr = "cryptonight/r"
        $config = ".config/xmrig.json"
        $env_exe = "XMRIG_EXE"
        $wizard = "xmrig.com/wizard"

    condition:
        // Process scans only: minerwatch's region scan sets mw_memory_scan; in a whole-process
        // scan offset 0 is unmapped, so uint32(0) is undefined. In a file scan neither holds,
        // so text (docs, this file) never matches.
        (mw_memory_scan or not defined uint32(0)) and 4 of them
}
