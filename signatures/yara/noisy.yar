/*
 * Noisy rules: shipped DISABLED (bundle.toml [yara.disabled] gives the reason). They are
 * syntax-checked at load but never compiled into the active rule set. A site that wants
 * them can copy the bundle and move this file to [yara] enabled.
 */

rule MW_Stratum_Scheme_Mention
{
    meta:
        description = "Any mention of a stratum URL scheme"
        source = "sigbase:CoinMiner_Strings; yara-rules:MALW_XMRIG_Miner; osquery-dk:miner"
        weight = 20
        category = "miner-suspect"
        tier = "sandbox"
        scope = "any"
        disabled_reason = "documentation, security tools and pool software mention the scheme"

    strings:
        $tcp = "stratum+tcp://" nocase
        $ssl = "stratum+ssl://" nocase
        $tls = "stratum+tls://" nocase
        $udp = "stratum+udp://" nocase
        $plain = "stratum://" nocase

    condition:
        1 of them
}

rule MW_Pool_Name_Mentions
{
    meta:
        description = "Several mining-pool names in one file"
        source = "malcontent:danger_crypto_miner and multiple_pools (pool names)"
        weight = 20
        category = "miner-suspect"
        tier = "sandbox"
        scope = "any"
        disabled_reason = "blocklists, browsers and security tools ship lists of pool names"

    strings:
        $p1 = "supportxmr" fullword
        $p2 = "nanopool" fullword
        $p3 = "f2pool" fullword
        $p4 = "hashvault" fullword
        $p5 = "c3pool" fullword
        $p6 = "moneroocean" fullword
        $p7 = "minexmr" fullword
        $p8 = "xmrpool" fullword
        $p9 = "herominers" fullword
        $p10 = "2miners" fullword

    condition:
        3 of them
}

rule MW_Cryptonight_Mention
{
    meta:
        description = "The word cryptonight"
        source = "malcontent:cryptonight; osquery-dk:exotic-command-events"
        weight = 10
        category = "miner-suspect"
        tier = "sandbox"
        scope = "any"
        disabled_reason = "crypto libraries and hash benchmarks name the algorithm"

    strings:
        $cn = "cryptonight" nocase

    condition:
        $cn
}
