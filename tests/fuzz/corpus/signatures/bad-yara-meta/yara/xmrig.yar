rule MW_No_Meta { strings: $a = "xmrig" condition: $a }
rule MW_Bad_Meta { meta: description = "" source = 5 weight = 101 category = "coin" tier = "beta" scope = "disk" condition: false }
rule MW_Slow { strings: $a = /[a-z]*/ condition: $a }
