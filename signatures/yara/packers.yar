/*
 * Packers. A packed executable is not a miner by itself: these rules only add a little
 * weight next to other evidence. Meta keys are described at the top of xmrig.yar.
 */

rule MW_UPX_Packed_ELF
{
    meta:
        description = "ELF executable packed with UPX (UPX! marker); packing alone is not mining"
        source = "xmrig-observed (a UPX-packed XMRig shows only UPX! on disk); UPX file format"
        weight = 10
        category = "packer"
        tier = "stable"
        scope = "file"

    strings:
        $upx = "UPX!"

    condition:
        not mw_memory_scan and uint32(0) == 0x464c457f and $upx
}
