rule MW_Broken
{
    meta:
        description = "broken"
    strings:
        $a = "xmrig
    condition:
        $a and
}
