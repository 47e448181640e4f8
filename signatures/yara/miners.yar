/*
 * Generic miner rules: stratum clients, cpuminer, RandomX and host tuning done by miners.
 * Authored by minerwatch from public facts (sources in each rule's meta). Meta keys are
 * described at the top of xmrig.yar. Like those, every rule here fires only on an ELF file or
 * in process memory (mw_memory_scan, or uint32(0) undefined in a whole-process scan), never
 * on text.
 */

rule MW_Stratum_Client
{
    meta:
        description = "Stratum mining client: a stratum URL scheme together with stratum RPC methods, or several stratum methods"
        source = "falco:stratum_cmdline; malcontent:danger_crypto_miner; stratum protocol method names (mining.subscribe/authorize/submit/notify); xmrig-observed login request with \"agent\""
        weight = 80
        category = "miner"
        tier = "stable"
        scope = "any"

    strings:
        $url_tcp = "stratum+tcp://" nocase
        $url_ssl = "stratum+ssl://" nocase
        $url_tls = "stratum+tls://" nocase
        $url_udp = "stratum+udp://" nocase
        $url_v2 = "stratum2+tcp://" nocase
        $rpc_subscribe = "mining.subscribe"
        $rpc_authorize = "mining.authorize"
        $rpc_submit = "mining.submit"
        $rpc_notify = "mining.notify"
        $login = "\"method\":\"login\""
        $agent = "\"agent\":\""

    condition:
        (mw_memory_scan or not defined uint32(0) or uint32(0) == 0x464c457f) and
        ((1 of ($url_*) and (1 of ($rpc_*) or ($login and $agent))) or 3 of ($rpc_*))
}

rule MW_CPUMiner
{
    meta:
        description = "cpuminer / minerd family miner"
        source = "sigbase:PUA_CryptoMiner_Jan19_1 (strings); yara-rules:capabilities (cpuminer 2.2.3X-Mining-Extensions)"
        weight = 100
        category = "miner"
        tier = "stable"
        scope = "any"

    strings:
        $ua = "User-Agent: cpuminer/"
        $merkle = "Stratum notify: invalid Merkle branch"
        $rate = "thread %d: %lu hashes, %s khash/s"
        $fp = "hash > target (false positive)"
        $ext = "cpuminer 2.2.3X-Mining-Extensions"

    condition:
        (mw_memory_scan or not defined uint32(0) or uint32(0) == 0x464c457f) and 2 of them
}

rule MW_RandomX_Salt
{
    meta:
        description = "RandomX proof-of-work code (Argon2 salt of Monero or a sibling coin); monerod and wallets embed it too"
        source = "xmrig-src src/crypto/randomx/randomx.cpp (RandomX\\x03 and variant salts)"
        weight = 40
        category = "miner-suspect"
        tier = "incubating"
        scope = "any"

    strings:
        $monero = { 52 61 6E 64 6F 6D 58 03 }                           // "RandomX\x03"
        $wownero = { 52 61 6E 64 6F 6D 57 4F 57 01 }                    // "RandomWOW\x01"
        $arqma = { 52 61 6E 64 6F 6D 41 52 51 01 }                      // "RandomARQ\x01"
        $graft = { 52 61 6E 64 6F 6D 58 2D 47 72 61 66 74 01 }          // "RandomX-Graft\x01"
        $safex = { 52 61 6E 64 6F 6D 53 46 58 01 }                      // "RandomSFX\x01"
        $yada = { 52 61 6E 64 6F 6D 58 59 61 64 61 43 6F 69 6E 03 }     // "RandomXYadaCoin\x03"

    condition:
        (mw_memory_scan or not defined uint32(0) or uint32(0) == 0x464c457f) and 1 of them
}

rule MW_Miner_MSR_HugePages
{
    meta:
        description = "Program that enables MSR writes and tunes huge pages, as RandomX miners do as root"
        source = "xmrig-src src/hw/msr/Msr_linux.cpp and src/crypto/common/LinuxMemory.cpp; elastic:impact_msr_write_access_enabled; sigma:proc_creation_lnx_crypto_mining"
        weight = 60
        category = "miner-suspect"
        tier = "incubating"
        scope = "any"

    strings:
        $msr_param = "/sys/module/msr/parameters/allow_writes"
        $msr_modprobe = "modprobe msr allow_writes=on"
        $hp_node = "/hugepages/hugepages-"
        $hp_1g = "hugepages-1048576kB"
        $hp_sysctl = "/proc/sys/vm/nr_hugepages"

    condition:
        (mw_memory_scan or not defined uint32(0) or uint32(0) == 0x464c457f) and 1 of ($msr_*) and 1 of ($hp_*)
}
